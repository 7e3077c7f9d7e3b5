//! Tensor names: each checkpoint family's keys onto the module tree of [`crate::model::Vit`] (HF ViT's
//! names) and back.
//!
//! The base prefix (`vit.`, `deit.`, `dinov2.`) is handled explicitly, headless checkpoints included;
//! the family differences are ordered tables of whole-segment renames, applied once per key.

use crate::config::ModelType;

/// Where a tensor name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Hugging Face transformers, for one `model_type`.
    Hf(ModelType),
    /// timm's `VisionTransformer` (`blocks.{i}.attn.qkv`, `pos_embed`, `head`).
    Timm,
}

/// What becomes of one tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// Loads into the parameter of this (canonical) name.
    To(String),
    /// timm's fused `qkv` (`weight` or `bias`): split in three onto `<prefix>.{query,key,value}.<param>`.
    SplitQkv { prefix: String, param: String },
    /// Known and deliberately unused (HF's `mask_token`, the `pooler`).
    Ignored,
    /// Not part of this family's layout.
    Unknown,
}

/// DINOv2 block names onto ViT's (inside `encoder.layer.{i}.`).
const DINOV2_LAYER: &[(&str, &str)] = &[
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
];

/// timm block names onto ViT's (inside `blocks.{i}.` -> `vit.encoder.layer.{i}.`).
const TIMM_LAYER: &[(&str, &str)] = &[
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
];

/// timm top-level names onto ViT's.
const TIMM_TOP: &[(&str, &str)] = &[
    ("cls_token", "vit.embeddings.cls_token"),
    ("dist_token", "vit.embeddings.distillation_token"),
    ("pos_embed", "vit.embeddings.position_embeddings"),
    ("patch_embed.proj.", "vit.embeddings.patch_embeddings.projection."),
    ("norm.", "vit.layernorm."),
    ("head.", "classifier."),
    ("head_dist.", "distillation_classifier."),
];

/// Heads whose HF names differ from ViT's.
const DEIT_HEAD: &[(&str, &str)] = &[("cls_classifier.", "classifier.")];

/// Renames the first matching prefix of `key` (`from` -> `to`), or `None`.
fn rename(key: &str, table: &[(&str, &str)], reverse: bool) -> Option<String> {
    table.iter().find_map(|&(hf, ours)| {
        let (from, to) = if reverse { (ours, hf) } else { (hf, ours) };
        key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
    })
}

/// Splits `encoder.layer.{i}.rest` (or timm's `blocks.{i}.rest`) into its parts.
fn split_layer<'a>(key: &'a str, layer_prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(layer_prefix)?;
    let (index, rest) = rest.split_once('.')?;
    index.bytes().all(|b| b.is_ascii_digit()).then_some((index, rest))
}

/// Renames inside the backbone (keys relative to the base prefix).
fn backbone_to_canonical(model_type: ModelType, key: &str) -> Mapped {
    if model_type == ModelType::Dinov2 {
        if key == "embeddings.mask_token" {
            return Mapped::Ignored;
        }
        if let Some((index, rest)) = split_layer(key, "encoder.layer.") {
            let rest = rename(rest, DINOV2_LAYER, false).unwrap_or_else(|| rest.to_string());
            return Mapped::To(format!("vit.encoder.layer.{index}.{rest}"));
        }
    }
    if key.starts_with("pooler.") {
        return Mapped::Ignored;
    }
    Mapped::To(format!("vit.{key}"))
}

/// The canonical name for a checkpoint key, or what else to do with it.
pub fn to_canonical(family: Family, key: &str) -> Mapped {
    match family {
        Family::Timm => {
            if let Some((index, rest)) = split_layer(key, "blocks.") {
                if let Some(param) = rest.strip_prefix("attn.qkv.") {
                    return Mapped::SplitQkv {
                        prefix: format!("vit.encoder.layer.{index}.attention.attention"),
                        param: param.to_string(),
                    };
                }
                return match rename(rest, TIMM_LAYER, false) {
                    Some(rest) => Mapped::To(format!("vit.encoder.layer.{index}.{rest}")),
                    None => Mapped::Unknown,
                };
            }
            rename(key, TIMM_TOP, false).map_or(Mapped::Unknown, Mapped::To)
        }
        Family::Hf(model_type) => {
            let base = format!("{}.", model_type.base_prefix());
            if let Some(inner) = key.strip_prefix(&base) {
                return backbone_to_canonical(model_type, inner);
            }
            // Headless checkpoints (`ViTModel`, `Dinov2Model`) store the backbone at the top level.
            if ["embeddings.", "encoder.", "layernorm.", "pooler."].iter().any(|p| key.starts_with(p)) {
                return backbone_to_canonical(model_type, key);
            }
            let head = match model_type {
                ModelType::Deit => rename(key, DEIT_HEAD, false),
                _ => None,
            };
            let head = head.unwrap_or_else(|| key.to_string());
            if head.starts_with("classifier.") || head.starts_with("distillation_classifier.") {
                Mapped::To(head)
            } else {
                Mapped::Unknown
            }
        }
    }
}

/// The Hugging Face name of a canonical tensor, for writing a checkpoint of `model_type` that
/// transformers loads. `with_head` picks between `*ForImageClassification` (backbone under the base
/// prefix) and the headless `*Model` layout.
pub fn to_hf(model_type: ModelType, key: &str, with_head: bool, deit_teacher: bool) -> String {
    if let Some(inner) = key.strip_prefix("vit.") {
        let inner = match (model_type, split_layer(inner, "encoder.layer.")) {
            (ModelType::Dinov2, Some((index, rest))) => {
                let rest = rename(rest, DINOV2_LAYER, true).unwrap_or_else(|| rest.to_string());
                format!("encoder.layer.{index}.{rest}")
            }
            _ => inner.to_string(),
        };
        return if with_head { format!("{}.{inner}", model_type.base_prefix()) } else { inner };
    }
    if model_type == ModelType::Deit
        && deit_teacher
        && let Some(renamed) = rename(key, DEIT_HEAD, true)
    {
        return renamed;
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(s: &str) -> Mapped {
        Mapped::To(s.to_string())
    }

    #[test]
    fn dinov2_keys_map_both_ways() {
        let family = Family::Hf(ModelType::Dinov2);
        let cases = [
            ("dinov2.encoder.layer.11.norm1.weight", "vit.encoder.layer.11.layernorm_before.weight"),
            ("dinov2.encoder.layer.0.mlp.fc2.bias", "vit.encoder.layer.0.output.dense.bias"),
            ("dinov2.encoder.layer.3.layer_scale1.lambda1", "vit.encoder.layer.3.layer_scale1.lambda1"),
            ("dinov2.encoder.layer.3.attention.attention.query.weight", "vit.encoder.layer.3.attention.attention.query.weight"),
            ("dinov2.layernorm.bias", "vit.layernorm.bias"),
            ("classifier.weight", "classifier.weight"),
        ];
        for (hf, ours) in cases {
            assert_eq!(to_canonical(family, hf), to(ours), "{hf}");
            assert_eq!(to_hf(ModelType::Dinov2, ours, true, false), hf);
        }
        assert_eq!(to_canonical(family, "embeddings.mask_token"), Mapped::Ignored);
        assert_eq!(to_canonical(family, "encoder.layer.2.norm2.weight"), to("vit.encoder.layer.2.layernorm_after.weight"));
        assert_eq!(to_hf(ModelType::Dinov2, "vit.encoder.layer.2.layernorm_after.weight", false, false), "encoder.layer.2.norm2.weight");
    }

    #[test]
    fn deit_teacher_heads_and_headless_vit() {
        let deit = Family::Hf(ModelType::Deit);
        assert_eq!(to_canonical(deit, "cls_classifier.bias"), to("classifier.bias"));
        assert_eq!(to_canonical(deit, "distillation_classifier.weight"), to("distillation_classifier.weight"));
        assert_eq!(to_canonical(deit, "deit.embeddings.distillation_token"), to("vit.embeddings.distillation_token"));
        assert_eq!(to_hf(ModelType::Deit, "classifier.bias", true, true), "cls_classifier.bias");
        let vit = Family::Hf(ModelType::Vit);
        assert_eq!(to_canonical(vit, "pooler.dense.weight"), Mapped::Ignored);
        assert_eq!(to_canonical(vit, "embeddings.cls_token"), to("vit.embeddings.cls_token"));
        assert_eq!(to_canonical(vit, "lm_head.weight"), Mapped::Unknown);
        // A layer index must be a number, and a DINOv2 rename must not leak into ViT.
        assert_eq!(to_canonical(vit, "vit.encoder.layer.0.norm1.weight"), to("vit.encoder.layer.0.norm1.weight"));
    }

    #[test]
    fn timm_keys_map_and_qkv_splits() {
        assert_eq!(
            to_canonical(Family::Timm, "blocks.7.attn.qkv.weight"),
            Mapped::SplitQkv { prefix: "vit.encoder.layer.7.attention.attention".into(), param: "weight".into() }
        );
        assert_eq!(to_canonical(Family::Timm, "blocks.7.mlp.fc1.bias"), to("vit.encoder.layer.7.intermediate.dense.bias"));
        assert_eq!(to_canonical(Family::Timm, "pos_embed"), to("vit.embeddings.position_embeddings"));
        assert_eq!(to_canonical(Family::Timm, "head.weight"), to("classifier.weight"));
        assert_eq!(to_canonical(Family::Timm, "blocks.x.norm1.weight"), Mapped::Unknown);
        assert_eq!(to_canonical(Family::Timm, "fc_norm.weight"), Mapped::Unknown);
    }
}
