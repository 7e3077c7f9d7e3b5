//! The classification loss every training step uses (fine-tuning, distillation, head importance).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Cross-entropy with label smoothing, averaged over the batch.
pub fn cross_entropy(logits: Tensor<2>, labels: &[usize], smoothing: f64) -> Tensor<1> {
    let targets = Tensor::<2, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [labels.len(), 1]),
        &logits.device(),
    );
    cross_entropy_to(logits, targets, smoothing)
}

/// [`cross_entropy`] with the target classes as a `[batch, 1]` tensor (e.g. a teacher's argmax).
pub fn cross_entropy_to(logits: Tensor<2>, targets: Tensor<2, Int>, smoothing: f64) -> Tensor<1> {
    let classes = logits.dims()[1];
    let log_probs = log_softmax(logits, 1);
    let nll = log_probs.clone().gather(1, targets).neg();
    let uniform = log_probs.sum_dim(1).neg() / classes as f64;
    (nll * (1.0 - smoothing) + uniform * smoothing).mean()
}
