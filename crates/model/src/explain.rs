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
