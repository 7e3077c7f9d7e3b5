//! From a pretrained checkpoint to a model ready to fine-tune: a head for the dataset's classes,
//! the run's dropout and stochastic depth, and the optimizer's parameter groups (weight decay, layer-wise
//! learning rates, frozen blocks).

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use burn_store::ModuleSnapshot;
use vitrine_model::config::Head;
use vitrine_model::{HfVitConfig, Loaded, ModelType, Vit, VitConfig};

use crate::adamw::AdamW;
use crate::recipe::Recipe;

/// Architecture and naming of a run's model: what a checkpoint or bundle is rebuilt from.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub config: VitConfig,
    /// `config.json` to write into bundles (labels set to the dataset's classes).
    pub hf_config: HfVitConfig,
    pub model_type: ModelType,
}

/// The pretrained model with a classifier for `classes`: its own head is kept when its labels
/// are exactly `classes`, otherwise a new linear head is initialised.
pub fn with_head(loaded: Loaded, classes: &[String], recipe: &Recipe, device: &Device) -> Result<(Vit, ModelSpec)> {
    let model_type = loaded.hf_config.model_type()?;
    let keep_head = loaded.labels == classes && loaded.config.head == Head::Linear;
    let config = VitConfig {
        head: Head::Linear,
        num_labels: classes.len(),
        drop_path_rate: recipe.drop_path,
        classifier_dropout: recipe.dropout,
        ..loaded.config.clone()
    };
    if loaded.config.head == Head::LinearWithDistillation {
        bail!("fine-tuning a checkpoint with a distillation head is not supported; start from its backbone");
    }
    let mut model = config.init(device);
    let tensors: Vec<_> = loaded
        .model
        .collect(None, None, false)
        .into_iter()
        .filter(|t| keep_head || !t.name.starts_with("classifier."))
        .collect();
    let result = model.apply(tensors, None, None, false);
    // Every pretrained tensor lands, and only the new head (when there is one) starts fresh.
    let missing: Vec<&str> = result.missing.iter().map(|(name, _)| name.as_str()).filter(|n| keep_head || !n.starts_with("classifier.")).collect();
    if !result.errors.is_empty() || !missing.is_empty() || !result.unused.is_empty() {
        bail!(
            "copying the pretrained weights failed: errors {:?}, not filled {missing:?}, left over {:?}",
            result.errors,
            result.unused
        );
    }
    let mut hf_config = loaded.hf_config.clone();
    hf_config.id2label = classes.iter().enumerate().map(|(i, c)| (i.to_string(), c.clone())).collect();
    hf_config.drop_path_rate = 0.0;
    hf_config.architectures = vec![format!("{}ForImageClassification", class_prefix(model_type))];
    Ok((model, ModelSpec { config, hf_config, model_type }))
}

/// transformers' class name prefix of a family.
pub fn class_prefix(model_type: ModelType) -> &'static str {
    match model_type {
        ModelType::Vit => "ViT",
        ModelType::Deit => "DeiT",
        ModelType::Dinov2 => "Dinov2",
    }
}

/// The parameters whose path matches any of `patterns`.
fn group<S: AsRef<str>>(patterns: &[S]) -> Result<ParamGroup> {
    ParamGroup::from_any_regexes(patterns.iter().map(|p| p.as_ref()).collect())
        .map_err(|e| anyhow::anyhow!("parameter group {:?}: {e:?}", patterns.iter().map(|p| p.as_ref()).collect::<Vec<_>>()))
}

/// Every float parameter's id and path, as burn's optimizer and freezing see them when they
/// match parameter groups (module names joined by dots).
pub fn param_paths<M: Module>(module: &M) -> Vec<(ParamId, String)> {
    struct Paths {
        path: Vec<String>,
        out: Vec<(ParamId, String)>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.push((param.id, self.path.join(".")));
        }
    }
    let mut paths = Paths { path: Vec::new(), out: Vec::new() };
    module.visit(&mut paths);
    paths.out
}

/// Regex of the parameters of block `i`.
fn block(i: usize) -> String {
    format!(r"^vit\.encoder\.layer\.{i}\.")
}

const EMBEDDINGS: &str = r"^vit\.embeddings\.";

/// The parameters of block `i`.
pub fn block_group(i: usize) -> Result<ParamGroup> {
    group(&[block(i)])
}

/// The patch and position embeddings and the learnt tokens.
pub fn embeddings_group() -> Result<ParamGroup> {
    group(&[EMBEDDINGS])
}

/// Biases, norms, LayerScale and the learnt tokens and positions get no weight decay.
const NO_DECAY: &str = r"(\.bias$|layernorm|\.lambda1$|_token$|position_embeddings$)";

/// AdamW with weight decay on weights only.
pub fn optimizer(recipe: &Recipe) -> Result<ModuleOptimizer> {
    let no_decay = group(&[NO_DECAY])?;
    Ok(AdamW::new(recipe.weight_decay as f32).init().with_group(no_decay, AdamW::new(0.0), None))
}

/// Only the top `trainable` blocks (plus final norm and head) compute gradients; the embeddings
/// train only when every block does.
pub fn set_trainable(model: Vit, trainable: usize) -> Result<Vit> {
    let n = model.vit.encoder.layer.len();
    let mut model = model.set_require_grad(true);
    let frozen: Vec<String> = (0..n - trainable.min(n)).map(block).collect();
    if !frozen.is_empty() {
        let mut patterns = frozen;
        patterns.push(EMBEDDINGS.into());
        model = model.set_require_grad_group(group(&patterns)?, false);
    }
    Ok(model)
}
