//! Patch embedding, prefix tokens and position embeddings.
//!
//! Ports `ViTEmbeddings`/`ViTPatchEmbeddings` (transformers `modeling_vit.py`), with DeiT's distillation
//! token (`DeiTEmbeddings`) as an option. Position embeddings are resized bicubically whenever the
//! patch grid differs from the checkpoint's, as HF does with `interpolate_pos_encoding=True` (ViT,
//! DeiT) and always (DINOv2); see [`crate::interpolate`] for the exact rule.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Tensor, TensorData};
use burn::tensor::Device;

use crate::config::VitConfig;
use crate::interpolate::{self, ResizeWeights};

/// `ViTPatchEmbeddings`: a strided convolution turns each patch into one token.
#[derive(Module, Debug)]
pub struct PatchEmbeddings {
    pub projection: Conv2d,
}

impl PatchEmbeddings {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let p = config.patch_size;
        let projection = Conv2dConfig::new([config.num_channels, config.hidden_size], [p, p])
            .with_stride([p, p])
            .init(device);
        Self { projection }
    }

    /// # Shapes
    /// - pixel_values: `[batch, channels, height, width]`
    /// - output: `[batch, (height / patch) * (width / patch), hidden]` (row-major patch order)
    fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        self.projection.forward(pixel_values).flatten::<3>(2, 3).swap_dims(1, 2)
    }
}

/// A learnt `[1, 1, hidden]` token: CLS or distillation.
type Token = Param<Tensor<3>>;

/// `ViTEmbeddings` (+ DeiT's `distillation_token`). Field names are the checkpoint's.
#[derive(Module, Debug)]
pub struct Embeddings {
    pub cls_token: Token,
    pub distillation_token: Option<Token>,
    /// `[1, prefix tokens + grid * grid, hidden]`.
    pub position_embeddings: Param<Tensor<3>>,
    pub patch_embeddings: PatchEmbeddings,
    #[module(skip)]
    patch_size: usize,
}

impl Embeddings {
    pub fn new(config: &VitConfig, device: &Device) -> Self {
        let hidden = config.hidden_size;
        let token = || Param::from_tensor(Tensor::zeros([1, 1, hidden], device));
        let positions = config.num_prefix_tokens() + config.grid_size().pow(2);
        Self {
            cls_token: token(),
            distillation_token: config.distillation_token.then(token),
            position_embeddings: Param::from_tensor(Tensor::zeros([1, positions, hidden], device)),
            patch_embeddings: PatchEmbeddings::new(config, device),
            patch_size: config.patch_size,
        }
    }

    /// Tokens before the patch tokens: CLS and, for DeiT, the distillation token.
    pub fn num_prefix_tokens(&self) -> usize {
        crate::config::prefix_tokens(self.distillation_token.is_some())
    }

    /// `[rows, cols]` of patches in an input of `[height, width]` pixels (a partial patch is dropped).
    pub fn patch_grid(&self, [height, width]: [usize; 2]) -> [usize; 2] {
        [height / self.patch_size, width / self.patch_size]
    }

    /// # Shapes
    /// - pixel_values: `[batch, channels, height, width]`, height and width multiples of the patch
    ///   size (extra pixels are ignored, as the strided convolution does in HF)
    /// - output: `[batch, prefix + (height / patch) * (width / patch), hidden]`
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let [batch, _, height, width] = pixel_values.dims();
        let grid = self.patch_grid([height, width]);
        let patches = self.patch_embeddings.forward(pixel_values);
        let hidden = patches.dims()[2];
        let mut tokens = vec![self.cls_token.val().expand([batch, 1, hidden])];
        if let Some(distillation) = &self.distillation_token {
            tokens.push(distillation.val().expand([batch, 1, hidden]));
        }
        tokens.push(patches);
        Tensor::cat(tokens, 1) + self.position_embeddings_for(grid)
    }

    /// Position embeddings for a `[rows, cols]` patch grid: the stored ones, or a bicubic resize of
    /// their grid part (prefix positions are kept as they are).
    ///
    /// # Shapes
    /// - output: `[1, prefix + rows * cols, hidden]`
    pub fn position_embeddings_for(&self, [rows, cols]: [usize; 2]) -> Tensor<3> {
        let stored = self.position_embeddings.val();
        let [_, positions, hidden] = stored.dims();
        let prefix = self.num_prefix_tokens();
        let side = ((positions - prefix) as f64).sqrt() as usize;
        // HF returns the stored table only for a square input of the trained size.
        if rows == side && cols == side {
            return stored;
        }
        let device = stored.device();
        let prefix_part = stored.clone().narrow(1, 0, prefix);
        let grid = stored.narrow(1, prefix, side * side).reshape([side, side * hidden]);
        let along_rows = as_matrix(interpolate::bicubic(side, rows), &device); // [rows, side]
        let along_cols = as_matrix(interpolate::bicubic(side, cols), &device); // [cols, side]
        let grid = along_rows.matmul(grid).reshape([rows, side, hidden]);
        let grid = along_cols.unsqueeze_dim::<3>(0).expand([rows, cols, side]).matmul(grid);
        Tensor::cat(vec![prefix_part, grid.reshape([1, rows * cols, hidden])], 1)
    }
}

fn as_matrix(resize: ResizeWeights, device: &Device) -> Tensor<2> {
    let data = TensorData::new(resize.weights, [resize.output, resize.input]);
    Tensor::from_data(data, device)
}
