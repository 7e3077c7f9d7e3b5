//! A run's metrics as JSON lines: `steps.jsonl` (one line per optimizer step) and `epochs.jsonl`
//! (one per epoch, with validation). On resume, lines past the checkpoint are dropped so that a
//! resumed run's logs read exactly like an uninterrupted run's.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::evaluate::Evaluation;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// Learning rate of the head (blocks get less under layer-wise decay).
    pub lr: f64,
    pub images_per_s: f64,
    /// Fraction of the step spent waiting for data.
    pub data_wait: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub trainable_blocks: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub val: Evaluation,
}

pub struct Logbook {
    steps: PathBuf,
    epochs: PathBuf,
}

impl Logbook {
    pub fn new(run_dir: &Path) -> Self {
        Self { steps: run_dir.join("steps.jsonl"), epochs: run_dir.join("epochs.jsonl") }
    }

    /// Drops records written after the checkpoint being resumed from.
    pub fn rewind(&self, step: usize, epoch: usize) -> Result<()> {
        let steps: Vec<StepRecord> = read_lines(&self.steps)?;
        rewrite(&self.steps, steps.iter().filter(|r| r.step <= step))?;
        let epochs: Vec<EpochRecord> = read_lines(&self.epochs)?;
        rewrite(&self.epochs, epochs.iter().filter(|r| r.epoch < epoch))
    }

    pub fn step(&self, record: &StepRecord) -> Result<()> {
        append(&self.steps, record)
    }

    pub fn epoch(&self, record: &EpochRecord) -> Result<()> {
        append(&self.epochs, record)
    }

    pub fn steps(&self) -> Result<Vec<StepRecord>> {
        read_lines(&self.steps)
    }

    pub fn epochs(&self) -> Result<Vec<EpochRecord>> {
        read_lines(&self.epochs)
    }
}

fn append<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(record)?).with_context(|| format!("writing {}", path.display()))
}

fn rewrite<'a, T: Serialize + 'a>(path: &Path, records: impl Iterator<Item = &'a T>) -> Result<()> {
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    crate::checkpoint::write_atomic(path, text.as_bytes())
}

/// The records of a JSON-lines file. A torn last line (a kill mid-write leaves it without its
/// newline) is ignored; any other line that does not parse is an error, not a silent gap.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(err) => bail!("{} line {}: {err}", path.display(), i + 1),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": ").unwrap();
        let values: Vec<serde_json::Value> = read_lines(&path).unwrap();
        assert_eq!(values.len(), 2);
        fs::write(&path, "{\"a\": 1}\nnot json\n{\"a\": 3}\n").unwrap();
        let err = read_lines::<serde_json::Value>(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
