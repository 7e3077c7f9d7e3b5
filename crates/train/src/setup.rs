//! From a pretrained checkpoint to a model ready to fine-tune: a head for the dataset's classes,
//! the run's dropout and stochastic depth, and the optimizer's parameter groups (weight decay, layer-wise
//! learning rates, frozen blocks).

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use burn_store::ModuleSnapshot;
use vitrine_model::config::Head;
use vitrine_model::{HfVitConfig, Loaded, ModelType, Vit, VitConfig};

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
    if !result.errors.is_empty() {
        bail!("copying the pretrained weights failed: {:?}", result.errors);
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

/// Biases, norms, LayerScale and the learnt tokens and positions get no weight decay.
const NO_DECAY: &str = r"(\.bias$|layernorm|\.lambda1$|_token$|position_embeddings$)";

/// AdamW with weight decay on weights only.
pub fn optimizer(recipe: &Recipe) -> Result<ModuleOptimizer> {
    let no_decay = group(&[NO_DECAY])?;
    Ok(AdamWConfig::new()
        .with_weight_decay(recipe.weight_decay as f32)
        .init()
        .with_group(no_decay, AdamWConfig::new().with_weight_decay(0.0).build(), None))
}

/// Peak learning rate of each depth: the head and final norm at `lr`, block `i` of `n` at
/// `lr * decay^(n - i)`, the embeddings at `lr * decay^(n + 1)`.
pub fn layer_lrs(recipe: &Recipe, num_layers: usize) -> (Vec<f64>, f64) {
    let blocks = (0..num_layers).map(|i| recipe.lr * recipe.layer_decay.powi((num_layers - i) as i32)).collect();
    (blocks, recipe.lr * recipe.layer_decay.powi(num_layers as i32 + 1))
}

/// Warmup then cosine for every group, scaled per depth (layer-wise decay).
pub fn lr_scheduler(recipe: &Recipe, num_layers: usize, total_steps: usize, warmup_steps: usize) -> Result<ModuleLrScheduler> {
    let schedule = |peak: f64| -> LrSchedulerConfig {
        let cosine_steps = total_steps.saturating_sub(warmup_steps).max(1);
        let cosine = CosineAnnealingLrSchedulerConfig::new(peak, cosine_steps).with_min_lr(peak * recipe.min_lr_ratio);
        if warmup_steps == 0 {
            return cosine.into();
        }
        let warmup = LinearLrSchedulerConfig::new(peak / warmup_steps as f64, peak, warmup_steps);
        SequentialLrSchedulerConfig::new(vec![warmup.into(), cosine.into()], vec![warmup_steps]).into()
    };
    let (blocks, embeddings) = layer_lrs(recipe, num_layers);
    let mut config = ModuleLrSchedulerConfig::new(schedule(recipe.lr));
    config = config.with_group(group(&[r"^vit\.embeddings\."])?, schedule(embeddings));
    for (i, peak) in blocks.into_iter().enumerate() {
        config = config.with_group(group(&[block(i)])?, schedule(peak));
    }
    config.init().map_err(|e| anyhow::anyhow!("learning-rate schedule: {e}"))
}

/// Only the top `trainable` blocks (plus final norm and head) compute gradients; the embeddings
/// train only when every block does.
pub fn set_trainable(model: Vit, trainable: usize) -> Result<Vit> {
    let n = model.vit.encoder.layer.len();
    let mut model = model.set_require_grad(true);
    let frozen: Vec<String> = (0..n - trainable.min(n)).map(block).collect();
    if !frozen.is_empty() {
        let mut patterns = frozen;
        patterns.push(r"^vit\.embeddings\.".into());
        model = model.set_require_grad_group(group(&patterns)?, false);
    }
    Ok(model)
}
