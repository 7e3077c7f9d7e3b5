//! Checkpoints that survive a kill or a full disk: each one is written into a fresh folder
//! (`checkpoints/step-NNNNNNN-batch-NNNNNN/`), then `checkpoints/latest` is atomically replaced to
//! point at it, and only then are older folders removed. A crash at any moment leaves the previous
//! one intact. The last end-of-epoch checkpoint is kept beside mid-epoch ones, so a run whose
//! epoch went wrong can go back to the end of the one before ([`rewind_to_epoch_end`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use burn::tensor::Bytes;
use burn_store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};
use vitrine_model::Vit;

use crate::run_dir::RunDir;

/// Where a run is, exactly enough to continue it as if it had never stopped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The epoch in progress (or the next one, when `batch_in_epoch` is 0).
    pub epoch: usize,
    /// Forward passes of that epoch already done (a multiple of the accumulation).
    pub batch_in_epoch: usize,
    /// Optimizer steps so far.
    pub step: usize,
    /// Running sums of the epoch in progress.
    pub epoch_loss_sum: f64,
    pub epoch_correct: usize,
    pub epoch_seen: usize,
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
    pub epochs_since_best: usize,
    /// The last finished epoch's validation loss (the divergence guard compares against it).
    #[serde(default)]
    pub last_val_loss: Option<f64>,
    /// Set when the run ended (finished or stopped early).
    pub finished: bool,
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

/// The bytes of `path`, or `None` when there is no such file; any other failure is an error.
pub fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Saves model, optimizer and state as the run's latest checkpoint.
pub fn save(run_dir: &Path, model: &Vit, optimizer: &ModuleOptimizer, state: &RunState) -> Result<()> {
    let root = RunDir(run_dir.to_path_buf()).checkpoints();
    let dir = root.join(format!("step-{:07}-batch-{:06}", state.step, state.batch_in_epoch));
    let result = (|| -> Result<()> {
        fs::create_dir_all(&dir)?;
        let mut store = BurnpackStore::from_bytes(None);
        model.save_into(&mut store).map_err(|e| anyhow::anyhow!("{e}"))?;
        let model_bytes = store.get_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        write_atomic(&dir.join("model.bpk"), &model_bytes)?;
        let optim_bytes = optimizer.into_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        write_atomic(&dir.join("optimizer.bpk"), &optim_bytes)?;
        write_atomic(&dir.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
        point_latest_at(&root, &dir)
    })();
    if let Err(err) = result {
        let _ = fs::remove_dir_all(&dir);
        return Err(err.context("saving a checkpoint (the previous one is kept)"));
    }
    let epoch_end = if state.batch_in_epoch == 0 { None } else { last_epoch_end(&root)? };
    remove_all_but(&root, &[Some(dir), epoch_end].into_iter().flatten().collect::<Vec<_>>())
}

/// Atomically makes checkpoint folder `dir` the one `latest` names.
fn point_latest_at(root: &Path, dir: &Path) -> Result<()> {
    write_atomic(&root.join("latest"), dir.file_name().expect("a checkpoint folder has a name").to_string_lossy().as_bytes())
}

/// Removes every checkpoint folder under `root` but `keep`.
fn remove_all_but(root: &Path, keep: &[PathBuf]) -> Result<()> {
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() && !keep.contains(&path) {
            let _ = fs::remove_dir_all(path);
        }
    }
    Ok(())
}

/// The newest checkpoint taken between epochs (batch 0), if any.
fn last_epoch_end(root: &Path) -> Result<Option<PathBuf>> {
    let mut ends: Vec<PathBuf> = fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("-batch-000000")))
        .collect();
    ends.sort();
    Ok(ends.pop())
}

/// Makes the last end-of-epoch checkpoint the latest again and removes the others (the ones after
/// it: [`save`] keeps no older ones): `resume` then repeats the epoch that followed it. Returns that
/// checkpoint's folder.
pub fn rewind_to_epoch_end(run_dir: &Path) -> Result<PathBuf> {
    let root = RunDir(run_dir.to_path_buf()).checkpoints();
    let Some(end) = last_epoch_end(&root)? else { bail!("{} holds no end-of-epoch checkpoint", root.display()) };
    point_latest_at(&root, &end)?;
    remove_all_but(&root, std::slice::from_ref(&end))?;
    Ok(end)
}

/// The latest checkpoint's folder, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = RunDir(run_dir.to_path_buf()).checkpoints();
    let pointer = root.join("latest");
    if !pointer.exists() {
        return Ok(None);
    }
    let name = fs::read_to_string(&pointer)?;
    let dir = root.join(name.trim());
    if !dir.is_dir() {
        bail!("{} points at {}, which is missing", pointer.display(), dir.display());
    }
    Ok(Some(dir))
}

/// The run state saved in checkpoint `dir`, without loading its model.
pub fn state(dir: &Path) -> Result<RunState> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// Loads a checkpoint into a model of the same architecture and a fresh optimizer; parameter
/// identities come from the file, so the optimizer's moments find their parameters again.
pub fn load(dir: &Path, mut model: Vit, optimizer: ModuleOptimizer) -> Result<(Vit, ModuleOptimizer, RunState)> {
    let read = |name: &str| fs::read(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()));
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(read("model.bpk")?)));
    let result = model.load_from(&mut store).map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", dir.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        bail!("checkpoint {} does not match the model: {:?} {:?}", dir.display(), result.errors, result.missing);
    }
    let optimizer = optimizer
        .from_bytes(Bytes::from_bytes_vec(read("optimizer.bpk")?))
        .map_err(|e| anyhow::anyhow!("optimizer state in {}: {e:?}", dir.display()))?;
    Ok((model, optimizer, state(dir)?))
}
