//! From a classifier's logits to the classes a person reads: probabilities and the top k, the same
//! natively and in the browser.

use serde::Serialize;

/// A class and its softmax probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopClass {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

/// Softmax of one row of logits, in f64 so that the largest probabilities are exact to f32.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// The `k` most probable classes, most probable first, ties to the lower index; unnamed classes are
/// `LABEL_{index}`, as in transformers.
pub fn top_k(probs: &[f32], k: usize, labels: &[String]) -> Vec<TopClass> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|index| TopClass {
            index,
            label: labels.get(index).cloned().unwrap_or_else(|| format!("LABEL_{index}")),
            prob: probs[index],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_names_and_breaks_ties_by_index() {
        let probs = softmax(&[0.0, 2.0, 1.0, 2.0]);
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let labels = vec!["a".to_string(), "b".to_string()];
        let top = top_k(&probs, 3, &labels);
        assert_eq!(top.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 3, 2]);
        assert_eq!(top[0].label, "b");
        assert_eq!(top[1].label, "LABEL_3");
    }
}
