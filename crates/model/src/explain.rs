//! Explanations for one class: gradient-weighted attention relevance (Chefer, Gur and Wolf, "Generic
//! Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
//! ICCV 2021, <https://arxiv.org/abs/2103.15679>, eqs. 5-6 for self-attention).
//!
//! For class `c`, each layer's attention probabilities `A` and the gradient of the logit `y_c` with
//! respect to them weigh one another, heads are averaged after a ReLU, and the result propagates
//! through the layers from the identity:
//!
//! ```text
//! A_bar = mean_heads(relu(dy_c/dA * A)),    R <- R + A_bar R,    R = I before the first layer
//! ```
//!
//! The map is R's CLS row over the patches, divided by its maximum. The gradients come from burn's
//! autodiff through [`crate::Vit::forward_with_attention_probes`].

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor, TensorData};

use crate::attention_map::{cls_to_patches, peak_normalised};
use crate::Vit;

/// `model` for [`relevance`]: its weights in f32 (int8 ones dequantized) on the autodiff flavour of
/// their device, frozen, so that gradients flow through the activations alone.
pub fn for_gradients(model: &Vit) -> Vit {
    struct ToAutodiff;
    impl ModuleMapper for ToAutodiff {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| if matches!(t.dtype(), DType::QFloat(_)) { t.dequantize() } else { t }.autodiff())
        }
    }
    model.clone().map(&mut ToAutodiff).no_grad()
}

/// The relevance of each patch for `classes[i]` in image `i`, peak-normalised, without token
/// merging (each layer's gradient must cover the same tokens).
///
/// # Shapes
/// - pixel_values: `[batch, channels, height, width]`, on an autodiff device (`tensor.autodiff()`)
/// - output: `[batch, rows, cols]`, the patch grid
///
/// # Panics
/// If the input is not on an autodiff device, the model has no classifier, or `classes` does not
/// hold one class in range per image.
pub fn relevance(model: &Vit, pixel_values: Tensor<4>, classes: &[usize]) -> Tensor<3> {
    let device = pixel_values.device();
    assert!(device.is_autodiff(), "relevance needs gradients: put the input on an autodiff device");
    let [batch, _, height, width] = pixel_values.dims();
    assert_eq!(classes.len(), batch, "one class per image");
    let [rows, cols] = model.vit.embeddings.patch_grid([height, width]);
    let out = model.forward_with_attention_probes(pixel_values);
    let logits = out.logits.expect("relevance needs a classifier");
    let labels = logits.dims()[1];
    let mut pick = vec![0.0f32; batch * labels];
    for (image, &class) in classes.iter().enumerate() {
        assert!(class < labels, "class {class} of a model with {labels}");
        pick[image * labels + class] = 1.0;
    }
    // Images do not interact, so one backward pass of the sum gives each image its own gradients.
    let grads = (logits * Tensor::<2>::from_data(TensorData::new(pick, [batch, labels]), &device)).sum().backward();
    let tokens = out.attentions[0].dims()[2];
    let identity = Tensor::<2>::eye(tokens, &device.clone().inner()).unsqueeze::<3>().expand([batch, tokens, tokens]);
    let r = out.attentions.into_iter().zip(&out.probes).fold(identity, |r, (probs, probe)| {
        let grad = probe.grad(&grads).expect("every attention probe has a gradient");
        let weighted = (grad * probs.inner()).clamp_min(0.0).mean_dim(1).reshape([batch, tokens, tokens]);
        r.clone() + weighted.matmul(r)
    });
    let prefix = model.vit.embeddings.num_prefix_tokens();
    peak_normalised(cls_to_patches(r, prefix, rows * cols)).reshape([batch, rows, cols])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    use crate::config::{Head, ModelType};
    use crate::model::tests::tiny;

    /// On pruned layers (4 and 3 heads), every family: the probes leave the logits as they are, and
    /// the maps have the grid's shape, a peak of 1 and no negative value.
    #[test]
    fn relevance_on_pruned_layers_of_every_family() {
        let device = Device::flex();
        device.seed(3);
        for (model_type, head) in [(ModelType::Vit, Head::Linear), (ModelType::Deit, Head::LinearWithDistillation), (ModelType::Dinov2, Head::Linear)] {
            let model = tiny(model_type, head).init(&device);
            let pixels = Tensor::<4>::random([2, 3, 32, 48], Distribution::Default, &device);
            let gradients = for_gradients(&model);
            let probed = gradients.forward_with_attention_probes(pixels.clone().autodiff()).logits.unwrap().inner();
            let diff: f32 = (probed - model.forward(pixels.clone())).abs().max().into_scalar();
            assert!(diff <= 1e-5, "{model_type:?}: the probes changed the logits by {diff}");
            let map = relevance(&gradients, pixels.autodiff(), &[4, 0]);
            assert_eq!(map.dims(), [2, 4, 6]);
            let values = map.into_data().try_to_vec::<f32>().unwrap();
            for image in values.chunks(24) {
                let peak = image.iter().copied().fold(f32::MIN, f32::max);
                assert!((peak - 1.0).abs() < 1e-6 && image.iter().all(|&v| v >= 0.0), "{model_type:?}: {image:?}");
            }
        }
    }

    /// An int8 model's relevance is its f32 rebuild's: the gradients run on dequantized weights.
    #[test]
    fn an_int8_model_explains_with_its_dequantized_weights() {
        let device = Device::flex();
        device.seed(4);
        let model = tiny(ModelType::Vit, Head::Linear).init(&device);
        let int8 = model.clone().with_int8_products();
        let pixels = Tensor::<4>::random([1, 3, 32, 32], Distribution::Default, &device);
        let ours = relevance(&for_gradients(&int8), pixels.clone().autodiff(), &[1]);
        let f32s = relevance(&for_gradients(&model), pixels.autodiff(), &[1]);
        let diff: f32 = (ours - f32s).abs().max().into_scalar();
        assert!(diff <= 0.05, "int8 against f32 relevance: {diff}");
    }

    #[test]
    #[should_panic(expected = "relevance needs gradients")]
    fn relevance_off_autodiff_panics() {
        let device = Device::flex();
        let model = tiny(ModelType::Vit, Head::Linear).init(&device);
        relevance(&model, Tensor::zeros([1, 3, 32, 32], &device), &[0]);
    }
}
