//! AdamW as burn's, each parameter's update in one pass on the CPU ([`vitrine_kernels::adamw`]).
//!
//! Same arithmetic, same state (burn's `AdamWState`, so checkpoints written before load as they
//! were), same result bit for bit; on other backends it is burn's `AdamW` itself.

use burn::optim::{
    AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{Device, Tensor};
use vitrine_kernels::optim::AdamWStep;

// burn's `AdamWConfig` defaults, which every recipe was tuned with.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// AdamW with decoupled weight decay `weight_decay` (times the learning rate).
#[derive(Clone)]
pub struct AdamW {
    weight_decay: f32,
    /// burn's AdamW of the same configuration, for tensors the kernel does not serve.
    burn: burn::optim::AdamW,
}

impl AdamW {
    pub fn new(weight_decay: f32) -> AdamW {
        AdamW {
            weight_decay,
            burn: AdamWConfig::new()
                .with_beta_1(BETA_1)
                .with_beta_2(BETA_2)
                .with_epsilon(EPSILON)
                .with_weight_decay(weight_decay)
                .build(),
        }
    }

    /// The optimizer of a whole model, every parameter with this configuration.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, Option<AdamWState<D>>) {
        if !vitrine_kernels::adamw_serves(&tensor, &grad) {
            return self.burn.step(lr, tensor, grad, state);
        }
        let (time, moments) = match state {
            Some(AdamWState { momentum: m }) => (m.time + 1, (m.moment_1, m.moment_2)),
            None => (1, (grad.zeros_like(), grad.zeros_like())),
        };
        let step = AdamWStep::new(BETA_1, BETA_2, EPSILON, self.weight_decay, lr, time as i32);
        let (tensor, moment_1, moment_2) = vitrine_kernels::adamw(tensor, grad, moments, step);
        let momentum = AdaptiveMomentumState {
            time,
            moment_1,
            moment_2,
            max_moment_2: None,
        };
        (tensor, Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(state: AdamWState<D>, device: &Device) -> AdamWState<D> {
        <burn::optim::AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::TensorData;

    fn train(
        mut optimizer: ModuleOptimizer,
        mut model: Linear,
        steps: usize,
    ) -> (Linear, ModuleOptimizer) {
        let device = model.weight.val().device();
        for i in 0..steps {
            let x: Vec<f32> = (0..5 * 64)
                .map(|j| ((j * 7 + i * 13) as f32 * 0.37).sin() * (1.0 + i as f32))
                .collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [5, 64]), &device);
            let grads = GradientsParams::from_grads(
                model.forward(x).powi_scalar(2).mean().backward(),
                &model,
            );
            model = optimizer.step(1e-2 / (1.0 + i as f64), model, grads);
        }
        (model, optimizer)
    }

    fn values(model: &Linear) -> Vec<f32> {
        let mut v: Vec<f32> = model.weight.val().into_data().try_to_vec().unwrap();
        v.extend(
            model
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        v
    }

    /// Bit for bit burn's AdamW over several steps (moments, bias correction, decay), on flex,
    /// where the one-pass kernel runs.
    #[test]
    fn the_one_pass_update_is_burns_adamw_exactly() {
        let device = Device::flex().autodiff();
        let model = LinearConfig::new(64, 48).init(&device);
        let weight = model.weight.val().inner();
        assert!(
            vitrine_kernels::adamw_serves(&weight, &weight),
            "the kernel serves these tensors"
        );
        let burns = AdamWConfig::new().with_weight_decay(0.05).init();
        let (a, _) = train(burns, model.clone(), 6);
        let (b, _) = train(AdamW::new(0.05).init(), model, 6);
        assert_eq!(values(&a), values(&b));
    }

    /// A checkpoint of burn's AdamW resumes under this one (and the other way), to the same bits.
    #[test]
    fn the_state_is_burns_and_resumes_either_way() {
        let device = Device::flex().autodiff();
        let model = LinearConfig::new(64, 48).init(&device);
        let (model, burns) = train(AdamWConfig::new().with_weight_decay(0.05).init(), model, 3);
        let bytes = burns.into_bytes().unwrap();
        let (a, _) = train(burns, model.clone(), 2);
        let (b, _) = train(AdamW::new(0.05).init().from_bytes(bytes).unwrap(), model, 2);
        assert_eq!(values(&a), values(&b));
    }
}
