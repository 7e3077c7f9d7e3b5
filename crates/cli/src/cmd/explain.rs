//! `vitrine explain`: where the model looked for a class, as overlay PNGs, an HTML gallery and
//! (with `--json`) the maps themselves.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use serde::Serialize;
use vitrine_model::attention_map::{AttentionMap, attention_map};
use vitrine_model::classes::{TopClass, softmax, top_k};
use vitrine_model::explain::{for_gradients, relevance};
use vitrine_model::Vit;
use vitrine_train::data::image_file::read_image;

use crate::device::DeviceKind;
use crate::source;

mod gallery;
mod overlay;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (config.json + model.safetensors [+ preprocessor_config.json]) or hf:ORG/NAME.
    #[arg(long)]
    model: String,
    /// Explain this class (one of the model's labels) for every image.
    #[arg(long, conflicts_with = "top")]
    class: Option<String>,
    /// Explain each image's K most probable classes.
    #[arg(long, default_value_t = 1)]
    top: usize,
    /// relevance (for the class: Chefer et al. 2021), rollout, mean (the last layer's heads),
    /// head:L.H (one head, from 0) or mask:L.H (that head's DINO mask: 60 % of its attention).
    #[arg(long, default_value = "relevance")]
    method: Method,
    /// Folder for the overlay PNGs and index.html (created; files of the same name are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Also print one JSON array: one object per image and class, in order.
    #[arg(long)]
    json: bool,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Images to explain (PNG, JPEG, WebP, GIF, BMP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// What a map shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The chosen class's relevance.
    Relevance,
    /// A class-agnostic attention map.
    Attention(AttentionMap),
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let layer_head = |spec: &str| -> Result<(usize, usize), String> {
            let (layer, head) = spec.split_once('.').ok_or(format!("{s}: expected L.H, e.g. {}:11.0", &s[..4]))?;
            let number = |n: &str| n.parse::<usize>().map_err(|_| format!("{s}: {n} is not a layer or head index"));
            Ok((number(layer)?, number(head)?))
        };
        Ok(match s {
            "relevance" => Self::Relevance,
            "rollout" => Self::Attention(AttentionMap::Rollout),
            "mean" => Self::Attention(AttentionMap::LastLayerMean),
            _ if s.starts_with("head:") => {
                let (layer, head) = layer_head(&s[5..])?;
                Self::Attention(AttentionMap::Head { layer, head })
            }
            _ if s.starts_with("mask:") => {
                let (layer, head) = layer_head(&s[5..])?;
                Self::Attention(AttentionMap::HeadMask { layer, head })
            }
            _ => return Err(format!("unknown method {s}: relevance, rollout, mean, head:L.H or mask:L.H")),
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Relevance => write!(f, "relevance"),
            Self::Attention(AttentionMap::Rollout) => write!(f, "rollout"),
            Self::Attention(AttentionMap::LastLayerMean) => write!(f, "mean"),
            Self::Attention(AttentionMap::Head { layer, head }) => write!(f, "head:{layer}.{head}"),
            Self::Attention(AttentionMap::HeadMask { layer, head }) => write!(f, "mask:{layer}.{head}"),
        }
    }
}

/// One image and class, as `--json` prints it.
#[derive(Serialize)]
struct Explained {
    image: String,
    class: String,
    method: String,
    grid: [usize; 2],
    map: Vec<f32>,
}

/// What the gallery shows of one explained image and class.
pub struct Entry {
    pub image: String,
    pub class: TopClass,
    pub png: String,
}

pub fn run(args: Args) -> Result<()> {
    let device = args.device.device()?;
    let model = source::load_for_inference(&args.model, &device)?;
    let vit = &model.loaded.model;
    if !vit.has_head() {
        bail!("{} is a backbone without a classifier: explanations are for a class", args.model);
    }
    check_method(args.method, &model.loaded.config.layer_num_attention_heads)?;
    if args.top == 0 {
        bail!("--top 0 explains nothing: give 1 or more");
    }
    let labels = &model.loaded.labels;
    let fixed = args.class.as_deref().map(|name| class_index(name, labels)).transpose()?;
    let gradients = (args.method == Method::Relevance).then(|| for_gradients(vit));
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let (mut explained, mut entries, mut failed) = (Vec::new(), Vec::new(), 0);
    for (n, path) in args.images.iter().enumerate() {
        let image = path.display().to_string();
        let outcome = read_image(path).and_then(|rgb| Ok((model.preprocess.batch(&[&*rgb], &device).map_err(|e| e.to_string())?, rgb)));
        let (pixels, rgb) = match outcome {
            Ok(ok) => ok,
            Err(error) => {
                eprintln!("error: {image}: {error}");
                failed += 1;
                continue;
            }
        };
        // The attention maps come with the logits; relevance needs its own pass, with gradients.
        let (logits, attentions) = match args.method {
            Method::Attention(_) => {
                let out = vit.forward_with_attentions(pixels.clone());
                (out.logits.expect("a classifier"), out.attentions)
            }
            Method::Relevance => (vit.forward(pixels.clone()), Vec::new()),
        };
        let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().expect("f32 logits");
        let probs = softmax(&logits);
        let classes = match fixed {
            Some(index) => vec![TopClass { index, label: labels[index].clone(), prob: probs[index] }],
            None => top_k(&probs, args.top, labels),
        };
        let [_, _, height, width] = pixels.dims();
        let grid = vit.vit.embeddings.patch_grid([height, width]);
        let maps = explain(gradients.as_ref(), args.method, pixels, &attentions, &classes, grid, model.loaded.config.num_prefix_tokens());
        let region = model.preprocess.visible_region([rgb.height(), rgb.width()]);
        for (class, map) in classes.into_iter().zip(maps) {
            let png = format!("{:03}-{}-{}-{}.png", n + 1, file_part(&stem(path)), file_part(&class.label), file_part(&args.method.to_string()));
            overlay::write(&args.out.join(&png), &rgb, &map, grid, region)?;
            explained.push(Explained { image: image.clone(), class: class.label.clone(), method: args.method.to_string(), grid, map });
            entries.push(Entry { image: image.clone(), class, png });
        }
    }
    let index = args.out.join("index.html");
    std::fs::write(&index, gallery::html(&args.model, args.method, &entries)).with_context(|| format!("cannot write {}", index.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explained)?);
    } else {
        for entry in &entries {
            println!("{}  {} ({:.1}%)  {}", entry.image, entry.class.label, 100.0 * entry.class.prob, args.out.join(&entry.png).display());
        }
        println!("gallery: {}", index.display());
    }
    if failed > 0 {
        bail!("{failed} of {} images could not be explained", args.images.len());
    }
    Ok(())
}

/// One map per class (`[rows * cols]`, peak-normalised): relevance in one backward pass over the
/// image repeated per class, or the class-agnostic map of `attentions`, repeated.
fn explain(
    gradients: Option<&Vit>,
    method: Method,
    pixels: Tensor<4>,
    attentions: &[Tensor<4>],
    classes: &[TopClass],
    grid: [usize; 2],
    prefix: usize,
) -> Vec<Vec<f32>> {
    let map = match (method, gradients) {
        (Method::Relevance, Some(gradients)) => {
            let indices: Vec<usize> = classes.iter().map(|c| c.index).collect();
            relevance(gradients, pixels.repeat_dim(0, classes.len()).autodiff(), &indices)
        }
        (Method::Attention(map), _) => attention_map(attentions, map, prefix, grid),
        (Method::Relevance, None) => unreachable!("relevance is computed on the model made for gradients"),
    };
    let values: Vec<f32> = map.into_data().convert::<f32>().try_into_vec().expect("f32 maps");
    let maps: Vec<Vec<f32>> = values.chunks(grid[0] * grid[1]).map(<[f32]>::to_vec).collect();
    // A class-agnostic map is one map, the same for every class.
    (0..classes.len()).map(|i| maps[i.min(maps.len() - 1)].clone()).collect()
}

/// A layer or head out of the model's range is refused before any image is read.
fn check_method(method: Method, heads: &[usize]) -> Result<()> {
    if let Method::Attention(AttentionMap::Head { layer, head } | AttentionMap::HeadMask { layer, head }) = method {
        let Some(&count) = heads.get(layer) else { bail!("--method {method}: the model has layers 0 to {}", heads.len() - 1) };
        if head >= count {
            bail!("--method {method}: layer {layer} has heads 0 to {}", count - 1);
        }
    }
    Ok(())
}

/// The index of label `name` (exact, then ignoring case), or an error listing the labels.
fn class_index(name: &str, labels: &[String]) -> Result<usize> {
    let exact = labels.iter().position(|l| l == name);
    if let Some(index) = exact.or_else(|| labels.iter().position(|l| l.eq_ignore_ascii_case(name))) {
        return Ok(index);
    }
    let shown: Vec<&str> = labels.iter().take(12).map(String::as_str).collect();
    let more = if labels.len() > shown.len() { format!(", ... ({} in all)", labels.len()) } else { String::new() };
    bail!("--class {name}: the model has no such label; its labels are {}{more}", shown.join(", "))
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

/// `s` with anything but letters, digits, `.` and `-` turned into `_`, for a file name.
fn file_part(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_print_back() {
        for s in ["relevance", "rollout", "mean", "head:11.0", "mask:3.5"] {
            assert_eq!(s.parse::<Method>().unwrap().to_string(), s);
        }
        for bad in ["heads:1.2", "head:1", "mask:a.2", "roll"] {
            assert!(bad.parse::<Method>().is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_heads_are_refused() {
        let heads = [6, 4];
        assert!(check_method("head:1.3".parse().unwrap(), &heads).is_ok());
        let err = check_method("mask:1.4".parse().unwrap(), &heads).unwrap_err().to_string();
        assert!(err.contains("layer 1 has heads 0 to 3"), "{err}");
        let err = check_method("head:2.0".parse().unwrap(), &heads).unwrap_err().to_string();
        assert!(err.contains("layers 0 to 1"), "{err}");
    }
}
