//! Where a model comes from: a local folder, or `hf:ORG/NAME[@REVISION]` on the Hugging Face Hub (cached).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use vitrine_model::{Loaded, PreprocessConfig};
use vitrine_train::bundle::{CONFIG, PREPROCESSOR, WEIGHTS};

/// A loaded model with its preprocessing and files.
pub struct Model {
    pub loaded: Loaded,
    pub preprocess: PreprocessConfig,
    /// The folder the files were read from (the Hub cache for `hf:` models).
    pub dir: PathBuf,
    /// Bytes of `model.safetensors`.
    pub weight_bytes: u64,
}

impl Model {
    /// Turns on token merging (ToMe) with `r` pairs per block (0: off), within what the model's
    /// inputs allow ([`vitrine_model::tome::check_pairs`]).
    pub fn merge_tokens(&mut self, r: usize) -> Result<()> {
        vitrine_model::tome::check_pairs(r, &self.loaded.config, &self.preprocess).map_err(|e| anyhow::anyhow!("--tome: {e}"))?;
        self.loaded.model = self.loaded.model.clone().with_token_merging(r);
        Ok(())
    }
}

/// Loads `--model`: a folder with `config.json` + `model.safetensors` (+ `preprocessor_config.json`),
/// or `hf:ORG/NAME[@REVISION]`, fetched into the standard Hugging Face cache (`HF_HOME`) the first time.
pub fn load(model: &str, device: &Device) -> Result<Model> {
    load_with(model, device, vitrine_train::bundle::read)
}

/// [`load`] for inference: an int8 bundle computes in int8 where it can
/// ([`vitrine_train::bundle::read_for_inference`]).
pub fn load_for_inference(model: &str, device: &Device) -> Result<Model> {
    load_with(model, device, vitrine_train::bundle::read_for_inference)
}

fn load_with(model: &str, device: &Device, read: fn(&std::path::Path, &Device) -> Result<vitrine_train::bundle::Bundle>) -> Result<Model> {
    let dir = match model.strip_prefix("hf:") {
        Some(repo) => fetch(repo)?,
        None => PathBuf::from(model),
    };
    let bundle = read(&dir, device)?;
    Ok(Model { loaded: bundle.loaded, preprocess: bundle.preprocess, dir, weight_bytes: bundle.weight_bytes })
}

/// `ORG/NAME`, or `ORG/NAME@REVISION` pinned to a branch, tag or commit (default: main).
fn hub_repo(spec: &str) -> Result<hf_hub::Repo> {
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if id.split('/').count() != 2 || id.split('/').any(str::is_empty) || revision.is_empty() {
        bail!("hf:{spec} is not of the form hf:ORG/NAME or hf:ORG/NAME@REVISION");
    }
    Ok(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.to_string()))
}

/// The snapshot folder of `repo` (`ORG/NAME[@REVISION]`) in the Hub cache, downloading what is
/// missing (with a progress bar). A repository already cached loads with no network.
fn fetch(repo: &str) -> Result<PathBuf> {
    let pinned = hub_repo(repo)?;
    let cache = hf_hub::Cache::from_env();
    let cached = cache.repo(pinned.clone());
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let remote = api.repo(pinned);
    if let (Some(config), Some(_)) = (cached.get(CONFIG), cached.get(WEIGHTS)) {
        let snapshot = config.parent().expect("a cached file has a folder").to_path_buf();
        if cached.get(PREPROCESSOR).is_none() {
            // Cached without one: look once more, but a cached model must still load offline.
            if let Err(err) = preprocessor(&remote, &snapshot) {
                eprintln!("warning: hf:{repo}: {err}; using the family's default preprocessing");
            }
        }
        return Ok(snapshot);
    }
    let offline = |file: &str| {
        format!(
            "cannot download {file} of hf:{repo} from the Hugging Face Hub (offline, or no such repository?); \
             a model already in the cache ({}) loads without network",
            cache.path().display()
        )
    };
    let config = remote.get(CONFIG).with_context(|| offline(CONFIG))?;
    remote.get(WEIGHTS).with_context(|| offline(WEIGHTS))?;
    let snapshot = config.parent().expect("a cached file has a folder").to_path_buf();
    preprocessor(&remote, &snapshot).with_context(|| format!("hf:{repo}: the model would see images prepared otherwise than it was trained for"))?;
    Ok(snapshot)
}

/// Downloads `preprocessor_config.json` into the cache. A repository without one is fine (the
/// family's default preprocessing applies, as in transformers) and is remembered, so later loads
/// do not ask again; any other failure is an error, not a silent fall-back to a default that may
/// not be the model's.
fn preprocessor(remote: &hf_hub::api::sync::ApiRepo, snapshot: &std::path::Path) -> Result<()> {
    let absent = absent_marker(snapshot);
    if absent.exists() {
        return Ok(());
    }
    match remote.get(PREPROCESSOR) {
        Ok(_) => Ok(()),
        Err(hf_hub::api::sync::ApiError::RequestError(err)) if matches!(*err, ureq::Error::Status(404, _)) => {
            // Best effort: without the marker the next load asks the Hub again.
            if let Some(folder) = absent.parent() {
                let _ = std::fs::create_dir_all(folder).and_then(|()| std::fs::write(&absent, b""));
            }
            Ok(())
        }
        Err(err) => Err(anyhow::anyhow!("cannot download {PREPROCESSOR}: {err}")),
    }
}

/// Where the Hub cache records that a revision has no `preprocessor_config.json`: huggingface_hub's
/// own layout, `<repo>/.no_exist/<revision>/<file>` beside `<repo>/snapshots/<revision>/`.
fn absent_marker(snapshot: &std::path::Path) -> PathBuf {
    let revision = snapshot.file_name().unwrap_or_default();
    let repo = snapshot.parent().and_then(|p| p.parent()).unwrap_or(snapshot);
    repo.join(".no_exist").join(revision).join(PREPROCESSOR)
}
