//! From a classifier's logits to the classes a person reads (probabilities and the top k), and from a
//! labelled folder's class names to the classifier's labels: the same natively and in the browser.

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

/// For each of a dataset's `classes` (its folder names), the index of the classifier label with its
/// name, so that a model whose labels are in another order, or a superset (a 1,000-class model on 10
/// folders), is evaluated on the right columns. A folder matches a label by its whole name or,
/// failing that, by one of the label's comma-separated synonyms (ImageNet's `"tench, Tinca tinca"`),
/// case, `_` and `-` aside; a folder that matches no label, or several, is an error. `whose` names
/// the classifier in the message ("the model", "the teacher").
pub fn match_labels(whose: &str, labels: &[String], classes: &[String]) -> Result<Vec<usize>, LabelError> {
    let norm = |s: &str| s.trim().to_lowercase().replace(['_', '-'], " ");
    let whole: Vec<String> = labels.iter().map(|l| norm(l)).collect();
    let mut columns = Vec::with_capacity(classes.len());
    for class in classes {
        let name = norm(class);
        let exact: Vec<usize> = (0..labels.len()).filter(|&i| whole[i] == name).collect();
        let by_synonym: Vec<usize> = (0..labels.len()).filter(|&i| labels[i].split(',').any(|part| norm(part) == name)).collect();
        match (exact.as_slice(), by_synonym.as_slice()) {
            ([i], _) | ([], [i]) => columns.push(*i),
            ([], []) => {
                return Err(LabelError::NoMatch { whose: whose.into(), class: class.clone(), count: labels.len(), preview: crate::error::preview(labels) });
            }
            (_, candidates) => {
                let names = candidates.iter().map(|&i| labels[i].clone()).collect();
                return Err(LabelError::Ambiguous { whose: whose.into(), class: class.clone(), names });
            }
        }
    }
    Ok(columns)
}

/// A dataset's class folder that names no classifier label, or several.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("the dataset's class folder {class:?} matches none of {whose}'s {count} labels ({preview})")]
    NoMatch { whose: String, class: String, count: usize, preview: String },
    #[error("the dataset's class folder {class:?} matches several of {whose}'s labels: {names:?}")]
    Ambiguous { whose: String, class: String, names: Vec<String> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_by_name_in_any_order_and_as_a_subset() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let model = strings(&["tench, Tinca tinca", "goldfish", "golf ball", "French horn, horn", "church, church building"]);
        let folders = strings(&["church", "french_horn", "golf_ball", "tench"]);
        assert_eq!(match_labels("the model", &model, &folders).unwrap(), [4, 3, 2, 0]);
        let err = match_labels("the model", &model, &strings(&["tench", "zebra"])).unwrap_err().to_string();
        assert!(err.contains("\"zebra\" matches none"), "{err}");
        let twice = strings(&["crane", "crane, bird"]);
        assert!(match_labels("the model", &twice, &strings(&["crane"])).is_ok(), "a whole-name match wins");
        let err = match_labels("the model", &strings(&["crane, bird", "crane, machine"]), &strings(&["crane"])).unwrap_err().to_string();
        assert!(err.contains("several"), "{err}");
    }

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
