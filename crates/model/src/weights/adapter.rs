//! Between PyTorch's layout and burn's: burn-store's adapters, with each f32 Linear weight
//! transposed in cache-sized blocks.
//!
//! burn-store 0.22.1 transposes a Linear weight one element at a time, each a `memcpy` of 4 bytes
//! to a far-away address: loading ViT-B/16 spent 28 % of its time there (`perf record` of
//! `vitrine predict`). Everything else (quantized weights, the norms' `weight`/`gamma` names) is
//! burn-store's own.

use burn::tensor::{DType, Shape, TensorData};
use burn_store::burn_pack::Tensor as PackTensor;
use burn_store::{BurnToPyTorchAdapter, ModuleAdapter, ModuleContext, PyTorchToBurnAdapter, bridge};

/// burn-store's name for `burn::nn::Linear` in a module path (its private `module_names::LINEAR`).
const LINEAR: &str = "Struct:Linear";

/// PyTorch's layout (and names) to burn's.
pub fn to_burn() -> Box<dyn ModuleAdapter> {
    Box::new(BlockTranspose(PyTorchToBurnAdapter))
}

/// burn's layout (and names) to PyTorch's.
pub fn to_pytorch() -> Box<dyn ModuleAdapter> {
    Box::new(BlockTranspose(BurnToPyTorchAdapter))
}

/// `A`, except that f32 Linear weights are transposed here (the same operation both ways).
#[derive(Clone)]
struct BlockTranspose<A>(A);

impl<A: ModuleAdapter + Clone + 'static> ModuleAdapter for BlockTranspose<A> {
    fn adapt(&self, tensor: PackTensor, ctx: ModuleContext<'_>) -> PackTensor {
        let is_weight = tensor.name.rsplit('.').next() == Some("weight");
        if ctx.module_type() == Some(LINEAR) && is_weight && tensor.shape.num_dims() == 2 && tensor.dtype == DType::F32 {
            let (name, shape) = (tensor.name.clone(), Shape::new([tensor.shape[1], tensor.shape[0]]));
            return bridge::map_data(tensor, name, DType::F32, shape, transposed);
        }
        self.0.adapt(tensor, ctx)
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        self.0.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// The transpose of an f32 matrix.
fn transposed(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape()[0], data.shape()[1]);
    let mut out = vec![0.0f32; rows * cols];
    match data.as_slice::<f32>() {
        Ok(values) => transpose::transpose(values, &mut out, cols, rows),
        // Bytes not aligned for f32: read them as values first.
        Err(_) => transpose::transpose(&super::le::f32s(data.as_bytes()), &mut out, cols, rows),
    }
    TensorData::new(out, [cols, rows])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_comes_back_transposed() {
        let (rows, cols) = (37, 70); // not a multiple of any block side
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let out = transposed(TensorData::new(values.clone(), [rows, cols]));
        assert_eq!(out.shape().to_vec(), vec![cols, rows]);
        let out: Vec<f32> = out.try_to_vec().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(out[c * rows + r], values[r * cols + c]);
            }
        }
    }
}
