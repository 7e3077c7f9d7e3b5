//! `vitrine inspect`: what a checkpoint holds.

use anyhow::Result;
use burn::module::Module;
use vitrine_model::config::Head;

use crate::device::DeviceKind;
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder or hf:ORG/NAME.
    #[arg(long)]
    model: String,
}

pub fn run(args: Args) -> Result<()> {
    let model = source::load(&args.model, &DeviceKind::Cpu.device()?)?;
    let c = &model.loaded.config;
    let uniform = |v: &[usize]| v.windows(2).all(|w| w[0] == w[1]);
    println!("model       {} ({})", args.model, model.dir.display());
    println!("family      {} ({:?} tensor names)", c.model_type.as_str(), model.loaded.family);
    println!("input       {0}x{0} px, patch {1}, {2} channels", c.image_size, c.patch_size, c.num_channels);
    println!("blocks      {} x hidden {}, head size {}", c.num_hidden_layers, c.hidden_size, c.head_dim());
    if uniform(&c.layer_num_attention_heads) && uniform(&c.layer_intermediate_size) {
        println!("per block   {} heads, MLP {}", c.num_attention_heads, c.layer_intermediate_size[0]);
    } else {
        println!("heads       {:?} (pruned from {})", c.layer_num_attention_heads, c.num_attention_heads);
        println!("MLP widths  {:?}", c.layer_intermediate_size);
    }
    println!(
        "extras      LayerScale: {}, distillation token: {}, pooling: {:?}",
        c.layerscale_value.is_some(),
        c.distillation_token,
        c.pooling
    );
    let head = match c.head {
        Head::None => "none (backbone)".to_string(),
        Head::Linear => format!("linear, {} classes", c.num_labels),
        Head::LinearWithDistillation => format!("linear + distillation head, {} classes", c.num_labels),
    };
    println!("head        {head}");
    println!("parameters  {:.2} M", model.loaded.model.num_params() as f64 / 1e6);
    println!("on disk     {:.2} MB (model.safetensors)", model.weight_bytes as f64 / 1e6);
    println!("preprocess  {:?}", model.preprocess);
    if !model.loaded.labels.is_empty() {
        let shown: Vec<&str> = model.loaded.labels.iter().take(10).map(String::as_str).collect();
        let more = model.loaded.labels.len().saturating_sub(shown.len());
        println!("labels      {}{}", shown.join(", "), if more > 0 { format!(", ... ({more} more)") } else { String::new() });
    }
    Ok(())
}
