//! Model configuration: Hugging Face `config.json` in, a typed [`VitConfig`] out.
//!
//! Two layers, as the checkpoint format and the model differ in what they must express:
//! [`HfVitConfig`] is a plain serde view of `config.json` for `model_type` `vit`, `deit` and `dinov2`
//! (`configuration_vit.py`, `configuration_deit.py`, `configuration_dinov2.py` in transformers), with
//! HF's names and defaults; [`VitConfig`] is what [`crate::model`] is built from. vitrine adds two
//! optional keys to `config.json` so that a pruned model is an ordinary model:
//! `layer_num_attention_heads` and `layer_intermediate_size` (one entry per layer).

use std::collections::BTreeMap;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The checkpoint families whose Hugging Face layout loads by its own tensor names.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `ViTModel` / `ViTForImageClassification` (also `facebook/deit-*-patch16-224`).
    Vit,
    /// `DeiTModel` / `DeiTForImageClassification[WithTeacher]`: CLS plus a distillation token.
    Deit,
    /// `Dinov2Model` / `Dinov2ForImageClassification`: LayerScale, classifier on CLS + mean patch token.
    Dinov2,
}

impl ModelType {
    /// The `model_type` string of `config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vit => "vit",
            Self::Deit => "deit",
            Self::Dinov2 => "dinov2",
        }
    }

    /// HF's `base_model_prefix`: the backbone's name inside a model with a head.
    pub fn base_prefix(self) -> &'static str {
        self.as_str()
    }
}

/// The MLP activation, from HF's `hidden_act`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `"gelu"`: the exact erf GELU.
    Gelu,
    /// `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`: the tanh approximation.
    GeluTanh,
    /// `"relu"`.
    Relu,
}

/// What the classifier sees.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The CLS token after the final LayerNorm (ViT, DeiT).
    Cls,
    /// The CLS token concatenated with the mean of the patch tokens (DINOv2): the head is `2 * hidden` wide.
    ClsAndMeanPatch,
}

/// The classification head(s).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Head {
    /// No head: a backbone (`ViTModel`, `Dinov2Model`).
    None,
    /// One linear classifier.
    Linear,
    /// DeiT with teacher: `classifier` on CLS and `distillation_classifier` on the distillation token,
    /// logits are their mean (`DeiTForImageClassificationWithTeacher`).
    LinearWithDistillation,
}

/// The architecture of a vitrine ViT. Field names follow Hugging Face's `config.json` where one exists.
#[derive(Config, Debug)]
pub struct VitConfig {
    /// The family, which fixes tensor names and small details (`model_type`).
    pub model_type: ModelType,
    /// Token width (`hidden_size`).
    pub hidden_size: usize,
    /// Number of encoder blocks (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Heads of the unpruned model (`num_attention_heads`): it fixes the head size `hidden_size / num_attention_heads`.
    pub num_attention_heads: usize,
    /// Heads kept in each layer (`layer_num_attention_heads`; all `num_attention_heads` when unpruned).
    pub layer_num_attention_heads: Vec<usize>,
    /// MLP width of each layer (`layer_intermediate_size`; `intermediate_size` when unpruned).
    pub layer_intermediate_size: Vec<usize>,
    /// MLP activation (`hidden_act`).
    pub hidden_act: Activation,
    /// LayerNorm epsilon (`layer_norm_eps`: 1e-12 for ViT/DeiT, 1e-6 for DINOv2).
    pub layer_norm_eps: f64,
    /// Training-time image size the position embeddings were learnt for (`image_size`).
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`).
    pub patch_size: usize,
    /// Input channels (`num_channels`).
    pub num_channels: usize,
    /// Bias on query, key and value (`qkv_bias`).
    pub qkv_bias: bool,
    /// LayerScale initial value (`layerscale_value`); `None` means no LayerScale.
    pub layerscale_value: Option<f64>,
    /// Whether a distillation token follows CLS (DeiT).
    pub distillation_token: bool,
    /// What the classifier sees.
    pub pooling: Pooling,
    /// The classification head(s).
    pub head: Head,
    /// Number of classes (0 for a backbone).
    pub num_labels: usize,
    /// Stochastic depth at the last block (`drop_path_rate`); a linear ramp from 0 at the first. Only active in training.
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
    /// Dropout on the classifier input (training only).
    #[config(default = 0.0)]
    pub classifier_dropout: f64,
}

/// Tokens before the patches: CLS, and DeiT's distillation token when there is one.
pub fn prefix_tokens(distillation_token: bool) -> usize {
    1 + usize::from(distillation_token)
}

impl VitConfig {
    /// Head size, shared by every layer (pruning removes heads, never narrows them).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Patch grid side of the checkpoint's position embeddings.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens placed before the patch tokens (CLS, and the distillation token for DeiT).
    pub fn num_prefix_tokens(&self) -> usize {
        prefix_tokens(self.distillation_token)
    }

    /// Checks the invariants every module relies on, with messages that name the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.patch_size == 0 {
            return bad("hidden_size, num_attention_heads and patch_size must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.image_size < self.patch_size {
            return bad(format!(
                "image_size ({}) must be at least patch_size ({})",
                self.image_size, self.patch_size
            ));
        }
        for (name, list) in [
            ("layer_num_attention_heads", &self.layer_num_attention_heads),
            ("layer_intermediate_size", &self.layer_intermediate_size),
        ] {
            if list.len() != self.num_hidden_layers {
                return bad(format!(
                    "{name} has {} entries but num_hidden_layers is {}",
                    list.len(),
                    self.num_hidden_layers
                ));
            }
        }
        if let Some(layer) = self.layer_num_attention_heads.iter().position(|&h| h == 0) {
            return bad(format!("layer {layer} has no attention heads left"));
        }
        if let Some(layer) = self
            .layer_num_attention_heads
            .iter()
            .position(|&h| h > self.num_attention_heads)
        {
            return bad(format!(
                "layer {layer} has {} heads, more than num_attention_heads ({})",
                self.layer_num_attention_heads[layer], self.num_attention_heads
            ));
        }
        if self.head != Head::None && self.num_labels == 0 {
            return bad("a classifier needs at least one label".into());
        }
        if self.head == Head::LinearWithDistillation && !self.distillation_token {
            return bad("a distillation head needs a distillation token".into());
        }
        Ok(())
    }
}

/// `config.json` as Hugging Face writes it for ViT, DeiT and DINOv2 (only the keys vitrine reads).
/// Defaults are transformers' own (`ViTConfig.__init__` and friends).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HfVitConfig {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: Option<usize>,
    /// DINOv2 gives the MLP width as a ratio instead of `intermediate_size`.
    pub mlp_ratio: Option<f64>,
    pub hidden_act: String,
    pub layer_norm_eps: Option<f64>,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub layerscale_value: Option<f64>,
    pub use_swiglu_ffn: bool,
    pub drop_path_rate: f64,
    pub num_register_tokens: usize,
    /// `{"0": "tench", ...}`; its length is the number of classes.
    pub id2label: BTreeMap<String, String>,
    /// vitrine: heads kept per layer after pruning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_num_attention_heads: Option<Vec<usize>>,
    /// vitrine: MLP width per layer after pruning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_intermediate_size: Option<Vec<usize>>,
    /// vitrine: how `model.safetensors` stores the weights (absent for f32; see `weights::storage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
}

impl Default for HfVitConfig {
    fn default() -> Self {
        Self {
            model_type: String::new(),
            architectures: Vec::new(),
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: None,
            mlp_ratio: None,
            hidden_act: "gelu".into(),
            layer_norm_eps: None,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            layerscale_value: None,
            use_swiglu_ffn: false,
            drop_path_rate: 0.0,
            num_register_tokens: 0,
            id2label: BTreeMap::new(),
            layer_num_attention_heads: None,
            layer_intermediate_size: None,
            quantization: None,
        }
    }
}

impl HfVitConfig {
    /// Parses `config.json`.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(json)?)
    }

    /// This config with the architecture of `config` after surgery ([`crate::prune`]): its blocks,
    /// per-block heads and MLP widths, and the input size its position table was made for.
    pub fn with_architecture(&self, config: &VitConfig) -> Self {
        Self {
            image_size: config.image_size,
            num_hidden_layers: config.num_hidden_layers,
            layer_num_attention_heads: Some(config.layer_num_attention_heads.clone()),
            layer_intermediate_size: Some(config.layer_intermediate_size.clone()),
            ..self.clone()
        }
    }

    /// The family named by `model_type`.
    pub fn model_type(&self) -> Result<ModelType, ConfigError> {
        match self.model_type.as_str() {
            "vit" => Ok(ModelType::Vit),
            "deit" => Ok(ModelType::Deit),
            "dinov2" => Ok(ModelType::Dinov2),
            other => Err(ConfigError::UnknownModelType(other.to_string())),
        }
    }

    /// Class names in index order, from `id2label`.
    pub fn labels(&self) -> Result<Vec<String>, ConfigError> {
        let mut labels = vec![None; self.id2label.len()];
        for (id, label) in &self.id2label {
            let index: usize = id
                .parse()
                .ok()
                .filter(|&i| i < labels.len())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "id2label key {id:?} is not an index below {}",
                        labels.len()
                    ))
                })?;
            // "3" and "03" are one index: two names for it would leave another index without one.
            if let Some((first, _)) = &labels[index] {
                return Err(ConfigError::Invalid(format!("id2label keys {first:?} and {id:?} are both index {index}")));
            }
            labels[index] = Some((id.clone(), label.clone()));
        }
        Ok(labels.into_iter().map(|entry| entry.map(|(_, label)| label).unwrap_or_default()).collect())
    }

    /// The architecture, given which head the weights carry (the file, not `architectures`, is the truth).
    pub fn to_vit_config(&self, head: Head) -> Result<VitConfig, ConfigError> {
        let model_type = self.model_type()?;
        if self.use_swiglu_ffn {
            return Err(ConfigError::Unsupported("DINOv2 with a SwiGLU MLP (use_swiglu_ffn)".into()));
        }
        if self.num_register_tokens > 0 {
            return Err(ConfigError::Unsupported("register tokens (num_register_tokens > 0)".into()));
        }
        let hidden_act = match self.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(ConfigError::Unsupported(format!("hidden_act {other:?}"))),
        };
        let intermediate_size = match (self.intermediate_size, self.mlp_ratio, model_type) {
            (_, Some(ratio), ModelType::Dinov2) => (self.hidden_size as f64 * ratio) as usize,
            (Some(size), _, _) => size,
            (None, None, ModelType::Dinov2) => self.hidden_size * 4,
            (None, _, _) => 3072,
        };
        let layers = self.num_hidden_layers;
        let num_labels = if head == Head::None { 0 } else { self.id2label.len() };
        let config = VitConfig {
            model_type,
            hidden_size: self.hidden_size,
            num_hidden_layers: layers,
            num_attention_heads: self.num_attention_heads,
            layer_num_attention_heads: self
                .layer_num_attention_heads
                .clone()
                .unwrap_or_else(|| vec![self.num_attention_heads; layers]),
            layer_intermediate_size: self
                .layer_intermediate_size
                .clone()
                .unwrap_or_else(|| vec![intermediate_size; layers]),
            hidden_act,
            layer_norm_eps: self.layer_norm_eps.unwrap_or(match model_type {
                ModelType::Dinov2 => 1e-6,
                _ => 1e-12,
            }),
            image_size: self.image_size,
            patch_size: self.patch_size,
            num_channels: self.num_channels,
            qkv_bias: self.qkv_bias,
            layerscale_value: match model_type {
                ModelType::Dinov2 => Some(self.layerscale_value.unwrap_or(1.0)),
                _ => None,
            },
            distillation_token: model_type == ModelType::Deit,
            pooling: match model_type {
                ModelType::Dinov2 => Pooling::ClsAndMeanPatch,
                _ => Pooling::Cls,
            },
            head,
            num_labels,
            drop_path_rate: self.drop_path_rate,
            classifier_dropout: 0.0,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dinov2_defaults_follow_transformers() {
        let hf = HfVitConfig::from_json(
            r#"{"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "patch_size": 14, "mlp_ratio": 4}"#,
        )
        .unwrap();
        let config = hf.to_vit_config(Head::None).unwrap();
        assert_eq!(config.layer_intermediate_size, vec![1536; 12]);
        assert_eq!(config.layer_norm_eps, 1e-6);
        assert_eq!(config.layerscale_value, Some(1.0));
        assert_eq!(config.pooling, Pooling::ClsAndMeanPatch);
        assert_eq!(config.head_dim(), 64);
    }

    #[test]
    fn unknown_model_type_is_named() {
        let hf = HfVitConfig::from_json(r#"{"model_type": "swin"}"#).unwrap();
        let err = hf.to_vit_config(Head::None).unwrap_err();
        assert_eq!(err.to_string(), "unknown model_type \"swin\" (vitrine reads vit, deit and dinov2)");
    }

    #[test]
    fn indivisible_heads_are_refused() {
        let hf = HfVitConfig::from_json(r#"{"model_type": "vit", "hidden_size": 30, "num_attention_heads": 4}"#).unwrap();
        let err = hf.to_vit_config(Head::None).unwrap_err().to_string();
        assert!(err.contains("hidden_size (30) must be a multiple of num_attention_heads (4)"), "{err}");
    }

    #[test]
    fn labels_come_in_index_order() {
        let hf = HfVitConfig::from_json(r#"{"model_type": "vit", "id2label": {"10": "k", "2": "c", "0": "a", "1": "b", "3": "d", "4": "e", "5": "f", "6": "g", "7": "h", "8": "i", "9": "j"}}"#).unwrap();
        assert_eq!(hf.labels().unwrap().join(""), "abcdefghijk");
    }

    #[test]
    fn an_index_given_twice_in_id2label_is_an_error() {
        let hf = HfVitConfig::from_json(r#"{"model_type": "vit", "id2label": {"0": "a", "3": "d", "03": "also d", "1": "b"}}"#).unwrap();
        let err = hf.labels().unwrap_err().to_string();
        assert!(err.contains(r#"id2label keys "03" and "3" are both index 3"#), "{err}");
    }
}
