//! Classification metrics: top-1, top-5, per-class precision and recall, the confusion matrix and
//! the worst-classified images, from the model's logits.

use std::sync::Arc;

use anyhow::{Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use vitrine_model::Vit;

use crate::data::Sample;
use crate::data::loader::{Transform, epoch_order, for_each_batch};

/// How many of the worst-classified images an evaluation keeps.
const WORST_KEPT: usize = 24;

/// A validation image the model got most wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    /// Position in the split.
    pub index: usize,
    pub label: usize,
    pub predicted: usize,
    /// Probability the model gave the true class.
    pub true_prob: f32,
    /// The image file, when the caller knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The metrics of one pass over a split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub n: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    pub worst: Vec<Miss>,
}

impl Evaluation {
    /// Recall of each class (its accuracy).
    pub fn recall(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| ratio(row[c], row.iter().sum()))
            .collect()
    }

    /// Precision of each class.
    pub fn precision(&self) -> Vec<f64> {
        (0..self.confusion.len())
            .map(|c| ratio(self.confusion[c][c], self.confusion.iter().map(|row| row[c]).sum()))
            .collect()
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Accumulates metrics batch by batch.
#[derive(Debug, Clone)]
pub struct Tally {
    classes: usize,
    n: usize,
    loss_sum: f64,
    top1: usize,
    top5: usize,
    confusion: Vec<Vec<usize>>,
    worst: Vec<Miss>,
}

impl Tally {
    pub fn new(classes: usize) -> Self {
        Self { classes, n: 0, loss_sum: 0.0, top1: 0, top5: 0, confusion: vec![vec![0; classes]; classes], worst: Vec::new() }
    }

    /// Adds a batch: `probs` row-major `[n, classes]`.
    pub fn add(&mut self, probs: &[f32], labels: &[usize], indices: &[usize]) {
        for (row, (&label, &index)) in probs.chunks_exact(self.classes).zip(labels.iter().zip(indices)) {
            let p_true = row[label];
            let rank = row.iter().filter(|&&p| p > p_true).count();
            let predicted = argmax(row);
            self.n += 1;
            self.loss_sum -= f64::from(p_true.max(1e-12)).ln();
            self.top1 += usize::from(predicted == label && rank == 0);
            self.top5 += usize::from(rank < 5);
            self.confusion[label][predicted] += 1;
            if predicted != label {
                self.worst.push(Miss { index, label, predicted, true_prob: p_true, path: None });
            }
        }
        self.worst.sort_by(|a, b| a.true_prob.total_cmp(&b.true_prob).then(a.index.cmp(&b.index)));
        self.worst.truncate(WORST_KEPT);
    }

    pub fn finish(self) -> Evaluation {
        let n = self.n.max(1) as f64;
        Evaluation {
            n: self.n,
            loss: self.loss_sum / n,
            top1: self.top1 as f64 / n,
            top5: self.top5 as f64 / n,
            confusion: self.confusion,
            worst: self.worst,
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Softmax probabilities of `logits` as host values.
pub fn probabilities(logits: Tensor<2>) -> Result<Vec<f32>> {
    to_host(softmax(logits, 1)).context("reading probabilities")
}

/// A float tensor's values, read back from its device in row-major order.
pub fn to_host<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor.into_data().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Which of the model's outputs an evaluation reads: all of them, or the columns of the dataset's
/// classes in the dataset's order ([`crate::data::match_labels`]), over which it then predicts.
#[derive(Debug, Clone, Copy)]
pub enum Columns<'a> {
    All(usize),
    Of(&'a [usize]),
}

impl Columns<'_> {
    fn len(&self) -> usize {
        match self {
            Columns::All(n) => *n,
            Columns::Of(columns) => columns.len(),
        }
    }

    fn pick(&self, logits: Tensor<2>) -> Tensor<2> {
        match self {
            Columns::All(_) => logits,
            Columns::Of(columns) => {
                let index = TensorData::new(columns.iter().map(|&c| c as i64).collect::<Vec<_>>(), [columns.len()]);
                let device = logits.device();
                logits.select(1, Tensor::<1, Int>::from_data(index, &device))
            }
        }
    }
}

/// Evaluates `model` on `samples` with the model's preprocessing.
pub fn evaluate(
    model: &Vit,
    samples: Arc<Vec<Sample>>,
    transform: Arc<Transform>,
    columns: Columns,
    batch_size: usize,
    device: &Device,
    progress: &ProgressBar,
) -> Result<Evaluation> {
    let mut tally = Tally::new(columns.len());
    let order = epoch_order(samples.len(), None);
    for_each_batch(samples.clone(), order, batch_size, transform, (0, 0), device, progress, |pixels, labels, indices| {
        tally.add(&probabilities(columns.pick(model.forward(pixels)))?, labels, indices);
        Ok(())
    })?;
    let mut evaluation = tally.finish();
    for miss in &mut evaluation.worst {
        miss.path = Some(samples[miss.index].path.display().to_string());
    }
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_top_k_confusion_and_worst() {
        let mut tally = Tally::new(3);
        // Rows: right; wrong with the truth second; wrong with the truth last.
        let probs = [0.7, 0.2, 0.1, 0.5, 0.3, 0.2, 0.1, 0.8, 0.1];
        tally.add(&probs, &[0, 1, 2], &[10, 11, 12]);
        let eval = tally.finish();
        assert_eq!(eval.n, 3);
        assert!((eval.top1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(eval.top5, 1.0);
        assert_eq!(eval.confusion, vec![vec![1, 0, 0], vec![1, 0, 0], vec![0, 1, 0]]);
        assert_eq!(eval.worst.iter().map(|m| m.index).collect::<Vec<_>>(), [12, 11]);
        assert_eq!(eval.recall(), vec![1.0, 0.0, 0.0]);
        assert_eq!(eval.precision(), vec![0.5, 0.0, 0.0]);
        let expected_loss = -(0.7f64.ln() + 0.3f64.ln() + 0.1f64.ln()) / 3.0;
        assert!((eval.loss - expected_loss).abs() < 1e-6);
    }
}
