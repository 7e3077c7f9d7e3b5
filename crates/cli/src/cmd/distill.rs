//! `vitrine distill`: train a smaller ViT from a teacher's outputs (soft KL or DeiT hard labels).
//! The student is another checkpoint, or is cut from the teacher: a subset of its blocks, the most
//! important heads of each block and the most important part of each MLP.

use std::path::PathBuf;

use anyhow::Result;
use vitrine_model::Loaded;
use vitrine_train::data::{ImageFolder, check_labels};
use vitrine_train::distill::DistillRecipe;
use vitrine_train::recipe::Recipe;
use vitrine_train::{student, trainer};

use super::train::{RecipeArgs, print_outcome};
use crate::source;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher: a classifier bundle for the dataset's classes.
    #[arg(long)]
    teacher: String,
    /// A student checkpoint (folder or hf:ORG/NAME); without it the student is cut from the teacher.
    #[arg(long)]
    student: Option<String>,
    #[command(flatten)]
    cut: StudentSpec,
    /// ImageFolder root.
    #[arg(long)]
    data: PathBuf,
    /// Run folder.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    teaching: TeachingArgs,
    /// DeiT's hard distillation: the teacher's top-1 as the label of the teacher's term.
    #[arg(long)]
    hard: bool,
    #[command(flatten)]
    recipe: RecipeArgs,
}

/// How the teacher teaches (`distill` and `compress`).
#[derive(clap::Args)]
pub struct TeachingArgs {
    /// Softening temperature of the KL term.
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    /// Weight of the teacher's term (the labels get 1 - alpha).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// The teacher's training run (`vitrine train --cache-frozen`): its cached frozen-block outputs give
    /// the teacher's logits for the view it cached, for the cost of its top blocks (same data, seed and augmentation).
    #[arg(long)]
    teacher_run: Option<String>,
    /// Weight of feature distillation: the mean squared difference between the student's classifier
    /// input and the teacher's (0 = off; needs equal widths, as in a student cut from the teacher).
    #[arg(long, default_value_t = 0.0)]
    feature_weight: f64,
}

impl TeachingArgs {
    pub fn recipe(&self, teacher: &str, hard: bool) -> DistillRecipe {
        DistillRecipe { teacher: teacher.to_string(), temperature: self.temperature, alpha: self.alpha, hard, teacher_run: self.teacher_run.clone(), feature_weight: self.feature_weight }
    }
}

pub fn run(args: Args) -> Result<()> {
    let device = args.recipe.device().device()?;
    let mut recipe = args.recipe.recipe(Recipe::distillation(), args.student.as_deref().unwrap_or(&args.teacher), &args.data);
    if recipe.reused_views() == 0 {
        recipe.views = 4;
    }
    recipe.distill = Some(args.teaching.recipe(&args.teacher, args.hard));
    let teacher = source::load(&args.teacher, &device)?;
    let data = ImageFolder::open(&args.data, recipe.seed)?;
    check_labels("the teacher", &teacher.loaded.labels, &data.classes)?;
    let (student, preprocess) = match &args.student {
        Some(student) => {
            let loaded = source::load(student, &device)?;
            (loaded.loaded, loaded.preprocess)
        }
        None => {
            let spec = StudentSpec { image_size: Some(recipe.image_size), ..args.cut.clone() };
            (cut_from_teacher(&args.teacher, &spec, &data, &device)?, teacher.preprocess.clone())
        }
    };
    println!(
        "student: {} blocks, heads {:?}, MLP {:?}, {:.2} M parameters",
        student.config.num_hidden_layers,
        student.config.layer_num_attention_heads,
        student.config.layer_intermediate_size,
        burn::module::Module::num_params(&student.model) as f64 / 1e6
    );
    print_outcome(&trainer::start(&args.out, recipe, student, preprocess, &device)?);
    Ok(())
}

/// How a student is cut from its teacher (the options of `distill` and `compress`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StudentSpec {
    /// Teacher blocks the student keeps, e.g. 0,2,4,6,8,10 (default: all; `compress`: every other block).
    #[arg(long = "student-layers", value_name = "STUDENT_LAYERS", value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// Heads per block the student keeps (the teacher's most important ones; default: all).
    #[arg(long = "student-heads", value_name = "STUDENT_HEADS")]
    pub heads: Option<usize>,
    /// Fraction of each MLP's neurons the student drops (the least important).
    #[arg(long = "student-mlp-drop", value_name = "STUDENT_MLP_DROP", default_value_t = 0.0)]
    pub mlp_drop: f64,
    /// The student's input side: its position table is resized to that grid once, here.
    #[arg(skip)]
    pub image_size: Option<u32>,
}

impl StudentSpec {
    fn cut(&self) -> student::Cut {
        student::Cut { layers: self.layers.clone(), heads: self.heads, mlp_drop: self.mlp_drop, image_size: self.image_size }
    }
}

/// The student `spec` cuts from `teacher` (a model folder or hf: name), on `device`.
pub fn cut_from_teacher(teacher: &str, spec: &StudentSpec, data: &ImageFolder, device: &burn::tensor::Device) -> Result<Loaded> {
    let teacher = source::load(teacher, &device.clone().autodiff())?;
    student::cut(&teacher.loaded, &teacher.preprocess, &spec.cut(), &data.train, device)
}
