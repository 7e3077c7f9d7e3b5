//! The teacher's side of a distillation run: its bundle, and its outputs on the student's views,
//! computed once and kept beside the run.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::Run;
use crate::bundle;
use crate::cache::TokenCache;
use crate::checkpoint::read_if_present;
use crate::data::loader::Transform;
use crate::distill::{self, Output, Teacher, TeacherOutputs};
use crate::recipe::Recipe;
use crate::run_dir::RunDir;

impl Run {
    /// The teacher bundle, checked against the dataset's classes, with the transform that shows it
    /// the student's training views at its own resolution.
    pub(super) fn teacher(&self, dir: &str) -> Result<Teacher> {
        let bundle::Bundle { loaded, preprocess, .. } = bundle::read(Path::new(dir), &self.device).context("reading the teacher")?;
        crate::data::check_labels("the teacher", &loaded.labels, &self.classes)?;
        let side = loaded.config.image_size as u32;
        let size = preprocess.output_size([side, side])[0];
        let transform = Arc::new(Transform::train(self.recipe.augment, size, &preprocess));
        let files = [bundle::CONFIG, bundle::WEIGHTS, bundle::PREPROCESSOR]
            .map(|name| read_if_present(&Path::new(dir).join(name)).map(Option::unwrap_or_default))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let fingerprint = distill::digest(files.iter().map(Vec::as_slice));
        Ok(Teacher { model: loaded.model, fingerprint, size, transform })
    }

    /// What the teacher's outputs for view `view` depend on besides the teacher itself: the output,
    /// the view's draw (seed, augmentation, resolution), the images in order, and the cache that
    /// stands in for its bottom blocks.
    fn outputs_key(&self, teacher: &Teacher, output: Output, view: usize) -> String {
        let recipe = &self.recipe;
        let distill = recipe.distill.as_ref().expect("a teacher comes with a distillation recipe");
        let setting = format!("{output:?} view {view} seed {} {:?} {} px run {:?}", recipe.seed, recipe.augment, teacher.size, distill.teacher_run);
        let images: String = self.train.iter().map(|s| format!("{}\t{}\n", s.path.display(), s.label)).collect();
        distill::digest([teacher.fingerprint.as_bytes(), setting.as_bytes(), images.as_bytes()])
    }

    /// The teacher's logits or features for training view `view`: saved beside the run, else from
    /// the teacher run's cached frozen blocks (`teacher_run`), else from the teacher on the images.
    pub(super) fn teacher_outputs(&self, teacher: &Teacher, output: Output, view: usize) -> Result<TeacherOutputs> {
        let path = self.dir.cache(&output.file_name(teacher.size, view));
        let key = self.outputs_key(teacher, output, view);
        if let Some(saved) = TeacherOutputs::load(&path, self.train.len(), output.width(&teacher.model), &key) {
            return Ok(saved);
        }
        let distill = self.recipe.distill.as_ref().expect("a teacher comes with a distillation recipe");
        let outputs = match &distill.teacher_run {
            Some(run) => {
                let (tokens, layers) = self.teacher_tokens(Path::new(run), teacher.size, view)?;
                TeacherOutputs::from_tokens(&teacher.model, output, &tokens, layers, &self.device)?
            }
            None => TeacherOutputs::compute(teacher, output, self.train.clone(), self.recipe.seed, view, &self.device)?,
        };
        outputs.save(&path, &key)?;
        Ok(outputs)
    }

    /// The teacher run's cached frozen blocks for view `view`, refused unless that run saw exactly
    /// the images this view shows: same dataset, seed and augmentation, at the teacher's resolution.
    fn teacher_tokens(&self, run: &Path, size: u32, view: usize) -> Result<(TokenCache, usize)> {
        let json = std::fs::read_to_string(RunDir(run.to_path_buf()).recipe()).with_context(|| format!("--teacher-run {}: no recipe.json", run.display()))?;
        let theirs = Recipe::from_json(&json).with_context(|| format!("--teacher-run {}: its recipe.json is not valid", run.display()))?;
        let mine = &self.recipe;
        let same_data = std::fs::canonicalize(&theirs.data).ok() == std::fs::canonicalize(&mine.data).ok();
        if !theirs.cache_frozen || view >= theirs.reused_views() {
            bail!("--teacher-run {} cached no training view {view} (it cached {} views)", run.display(), theirs.reused_views());
        }
        if !same_data || theirs.seed != mine.seed || theirs.augment != mine.augment || theirs.image_size != size || theirs.limit_train != 0 {
            bail!(
                "--teacher-run {} trained on other views (data, seed, augmentation or {size} px differ): its cache cannot stand in for the teacher",
                run.display()
            );
        }
        let path = RunDir(run.to_path_buf()).cache(&format!("train-{size}px-view{view}.f16"));
        let tokens = TokenCache::load(&path)?.with_context(|| format!("{} is missing", path.display()))?;
        let labels: Vec<usize> = self.train.iter().map(|s| s.label).collect();
        if tokens.labels != labels {
            bail!("{} holds other images than this run's training split", path.display());
        }
        Ok((tokens, theirs.frozen_blocks))
    }
}
