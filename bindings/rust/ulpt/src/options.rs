//! Options structs and the enums they use.  Defaults come from the library's
//! `ulpt_*_options_init` functions, so they are the C `*_INIT` macros' defaults.

use ulpt_sys as sys;

use crate::error::{check, Error, Result};

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $c:path,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $variant,)*
        }

        impl $name {
            /// The value of the C constant.
            pub fn to_raw(self) -> i32 {
                match self {
                    $($name::$variant => $c,)*
                }
            }

            /// The variant of a C constant, if it is one.
            pub fn from_raw(value: i32) -> Option<Self> {
                match value {
                    $(v if v == $c => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use c_enum;

c_enum! {
    /// The distribution of the frozen projection P (`ULPT_PROJ_*`).
    ProjectionKind {
        /// U(-a, a), a = sqrt(6/(rank+dim)); the default.
        XavierUniform = sys::ULPT_PROJ_XAVIER_UNIFORM,
        /// U(-a, a), a = 1/sqrt(rank).
        KaimingUniform = sys::ULPT_PROJ_KAIMING_UNIFORM,
        /// N(0, 1/rank).
        Gaussian = sys::ULPT_PROJ_GAUSSIAN,
        /// ±1/sqrt(rank), each with probability 1/2.
        Rademacher = sys::ULPT_PROJ_RADEMACHER,
        /// P = I with rank == dim: vanilla prompt tuning.
        Identity = sys::ULPT_PROJ_IDENTITY,
    }
}

c_enum! {
    /// The optimizer (`ULPT_OPT_*`), with `torch.optim`'s update rules.
    OptimizerKind {
        /// SGD with momentum.
        Sgd = sys::ULPT_OPT_SGD,
        /// Adam, L2 weight decay added to the gradient.
        Adam = sys::ULPT_OPT_ADAM,
        /// Adam with decoupled weight decay; the default.
        AdamW = sys::ULPT_OPT_ADAMW,
    }
}

c_enum! {
    /// The learning-rate schedule after the warmup (`ULPT_SCHED_*`).
    Schedule {
        /// The peak rate throughout; the default.
        Constant = sys::ULPT_SCHED_CONSTANT,
        /// Linear decay to 0 at `total_steps`.
        Linear = sys::ULPT_SCHED_LINEAR,
        /// Cosine decay to 0 at `total_steps`.
        Cosine = sys::ULPT_SCHED_COSINE,
    }
}

c_enum! {
    /// How parameters are stored in a prompt file (`ULPT_DTYPE_*`).
    Dtype {
        /// float32, exact; the default.
        F32 = sys::ULPT_DTYPE_F32,
        /// IEEE half, round to nearest even.
        F16 = sys::ULPT_DTYPE_F16,
        /// bfloat16, round to nearest even.
        Bf16 = sys::ULPT_DTYPE_BF16,
    }
}

c_enum! {
    /// What a libulpt file holds (`ULPT_FILE_*`).
    FileKind {
        /// A prompt file.
        Prompt = sys::ULPT_FILE_PROMPT,
        /// A checkpoint: a prompt plus the optimizer's state.
        Checkpoint = sys::ULPT_FILE_CHECKPOINT,
    }
}

fn init_failed(what: &str, code: i32) -> ! {
    // Only NULL or an unknown version fail, and this crate passes neither.
    panic!("{} failed: {}", what, Error::last(code))
}

/// The shape and initialisation of a prompt (`ulpt_prompt_options`).
///
/// `n_tokens` and `dim` have no default (0 is refused); everything else defaults as in
/// `ulpt.h`:
///
/// ```
/// let o = ulpt::PromptOptions { n_tokens: 20, dim: 64, ..Default::default() };
/// assert_eq!((o.rank, o.n_groups, o.init_std), (2, 1, 1.0));
/// assert_eq!(o.projection_kind, ulpt::ProjectionKind::XavierUniform);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptOptions {
    /// The number of soft tokens n (>= 1).
    pub n_tokens: u32,
    /// r, default 2; equal to `dim` for [`ProjectionKind::Identity`].
    pub rank: u32,
    /// The host model's embedding width d (>= 1).
    pub dim: u32,
    /// Token groups g >= 1, each with its own projection; `n_tokens` must be a multiple.
    pub n_groups: u32,
    /// The seed of P (group i uses `projection_seed + i*0x9E3779B97F4A7C15`).
    pub projection_seed: u64,
    /// The distribution of P.
    pub projection_kind: ProjectionKind,
    /// The seed of the initial Z.
    pub init_seed: u64,
    /// Z ~ N(0, init_std²), default 1 (finite, >= 0).
    pub init_std: f32,
    /// No scale s (s = 1, not trained): the paper's ablation (`ULPT_NO_SCALE`).
    pub no_scale: bool,
    /// No shift b (b = 0, not trained): the paper's ablation (`ULPT_NO_SHIFT`).
    pub no_shift: bool,
}

impl Default for PromptOptions {
    fn default() -> Self {
        let mut raw = sys::ulpt_prompt_options::default();
        // SAFETY: raw is a valid ulpt_prompt_options of the version passed.
        let rc = unsafe { sys::ulpt_prompt_options_init(&mut raw, sys::ULPT_PROMPT_OPTIONS_VERSION) };
        if rc != sys::ULPT_OK {
            init_failed("ulpt_prompt_options_init", rc);
        }
        PromptOptions {
            n_tokens: raw.n_tokens,
            rank: raw.rank,
            dim: raw.dim,
            n_groups: raw.n_groups,
            projection_seed: raw.projection_seed,
            projection_kind: ProjectionKind::from_raw(raw.projection_kind)
                .unwrap_or(ProjectionKind::XavierUniform),
            init_seed: raw.init_seed,
            init_std: raw.init_std,
            no_scale: raw.flags & sys::ULPT_NO_SCALE != 0,
            no_shift: raw.flags & sys::ULPT_NO_SHIFT != 0,
        }
    }
}

impl PromptOptions {
    /// The defaults with `n_tokens` and `dim` set.
    pub fn new(n_tokens: u32, dim: u32) -> Self {
        PromptOptions { n_tokens, dim, ..Default::default() }
    }

    pub(crate) fn to_raw(&self) -> Result<sys::ulpt_prompt_options> {
        let mut raw = sys::ulpt_prompt_options::default();
        // SAFETY: as in default(); fields this crate does not know keep their defaults.
        check(unsafe { sys::ulpt_prompt_options_init(&mut raw, sys::ULPT_PROMPT_OPTIONS_VERSION) })?;
        raw.n_tokens = self.n_tokens;
        raw.rank = self.rank;
        raw.dim = self.dim;
        raw.n_groups = self.n_groups;
        raw.projection_seed = self.projection_seed;
        raw.projection_kind = self.projection_kind.to_raw();
        raw.init_seed = self.init_seed;
        raw.init_std = self.init_std;
        raw.flags = if self.no_scale { sys::ULPT_NO_SCALE } else { 0 }
            | if self.no_shift { sys::ULPT_NO_SHIFT } else { 0 };
        Ok(raw)
    }
}

/// The optimizer and its schedule (`ulpt_optimizer_options`); defaults as in `ulpt.h`
/// (AdamW, lr 1e-3, betas 0.9/0.999, eps 1e-8, torch's weight decay for the kind).
///
/// ```
/// let o = ulpt::OptimizerOptions { lr: 0.05, ..Default::default() };
/// assert_eq!(o.kind, ulpt::OptimizerKind::AdamW);
/// assert_eq!(o.weight_decay, None); // torch's default: 0.01 for AdamW, 0 otherwise
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerOptions {
    /// SGD, Adam or AdamW.
    pub kind: OptimizerKind,
    /// The peak learning rate (> 0).
    pub lr: f64,
    /// Adam(W) first-moment decay, in [0, 1).
    pub beta1: f64,
    /// Adam(W) second-moment decay, in [0, 1).
    pub beta2: f64,
    /// Adam(W) denominator epsilon (> 0).
    pub eps: f64,
    /// Weight decay (>= 0); `None` is torch's default for the kind
    /// (`ULPT_WEIGHT_DECAY_DEFAULT`).
    pub weight_decay: Option<f64>,
    /// SGD momentum, in [0, 1).
    pub momentum: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// The decay after the warmup.
    pub schedule: Schedule,
    /// Linear warmup steps from 0.
    pub warmup_steps: u64,
    /// The end of the linear or cosine decay (> `warmup_steps` for those).
    pub total_steps: u64,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        let mut raw = sys::ulpt_optimizer_options::default();
        // SAFETY: raw is a valid ulpt_optimizer_options of the version passed.
        let rc = unsafe {
            sys::ulpt_optimizer_options_init(&mut raw, sys::ULPT_OPTIMIZER_OPTIONS_VERSION)
        };
        if rc != sys::ULPT_OK {
            init_failed("ulpt_optimizer_options_init", rc);
        }
        OptimizerOptions::from_raw(&raw)
    }
}

impl OptimizerOptions {
    pub(crate) fn from_raw(raw: &sys::ulpt_optimizer_options) -> OptimizerOptions {
        OptimizerOptions {
            kind: OptimizerKind::from_raw(raw.kind).unwrap_or(OptimizerKind::AdamW),
            lr: raw.lr,
            beta1: raw.beta1,
            beta2: raw.beta2,
            eps: raw.eps,
            weight_decay: if raw.weight_decay == sys::ULPT_WEIGHT_DECAY_DEFAULT {
                None
            } else {
                Some(raw.weight_decay)
            },
            momentum: raw.momentum,
            max_grad_norm: raw.max_grad_norm,
            schedule: Schedule::from_raw(raw.schedule).unwrap_or(Schedule::Constant),
            warmup_steps: raw.warmup_steps,
            total_steps: raw.total_steps,
        }
    }

    /// The options of a live C optimizer (`ulpt_optimizer_get_options`).
    pub(crate) fn of(opt: *const sys::ulpt_optimizer) -> OptimizerOptions {
        let mut raw = sys::ulpt_optimizer_options::default();
        // SAFETY: raw is a ulpt_optimizer_options of the version passed, then of the
        // version get_options writes; opt is live (the caller's invariant), read only.
        let rc = unsafe {
            let rc = sys::ulpt_optimizer_options_init(&mut raw, sys::ULPT_OPTIMIZER_OPTIONS_VERSION);
            if rc == sys::ULPT_OK {
                sys::ulpt_optimizer_get_options(&mut raw, opt)
            } else {
                rc
            }
        };
        if rc != sys::ULPT_OK {
            init_failed("ulpt_optimizer_get_options", rc);
        }
        OptimizerOptions::from_raw(&raw)
    }

    pub(crate) fn to_raw(&self) -> Result<sys::ulpt_optimizer_options> {
        let mut raw = sys::ulpt_optimizer_options::default();
        // SAFETY: as in default().
        check(unsafe {
            sys::ulpt_optimizer_options_init(&mut raw, sys::ULPT_OPTIMIZER_OPTIONS_VERSION)
        })?;
        raw.kind = self.kind.to_raw();
        raw.lr = self.lr;
        raw.beta1 = self.beta1;
        raw.beta2 = self.beta2;
        raw.eps = self.eps;
        raw.weight_decay = match self.weight_decay {
            None => sys::ULPT_WEIGHT_DECAY_DEFAULT,
            // C's "default" sentinel: refused here rather than silently taken as None
            Some(w) if w == sys::ULPT_WEIGHT_DECAY_DEFAULT => {
                return Err(Error::invalid(format!(
                    "Optimizer::new: weight_decay {} is not a finite number >= 0 (None is the default)",
                    w
                )))
            }
            Some(w) => w,
        };
        raw.momentum = self.momentum;
        raw.max_grad_norm = self.max_grad_norm;
        raw.schedule = self.schedule.to_raw();
        raw.warmup_steps = self.warmup_steps;
        raw.total_steps = self.total_steps;
        Ok(raw)
    }
}

/// How a prompt is written (`ulpt_save_options`): float32 at zlib level 6 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// The storage type of the parameters.
    pub dtype: Dtype,
    /// zlib level 0..=9 (0: stored uncompressed).
    pub level: i32,
}

impl Default for SaveOptions {
    fn default() -> Self {
        let mut raw = sys::ulpt_save_options::default();
        // SAFETY: raw is a valid ulpt_save_options of the version passed.
        let rc = unsafe { sys::ulpt_save_options_init(&mut raw, sys::ULPT_SAVE_OPTIONS_VERSION) };
        if rc != sys::ULPT_OK {
            init_failed("ulpt_save_options_init", rc);
        }
        SaveOptions { dtype: Dtype::from_raw(raw.dtype).unwrap_or(Dtype::F32), level: raw.level }
    }
}

impl SaveOptions {
    pub(crate) fn to_raw(&self) -> Result<sys::ulpt_save_options> {
        let mut raw = sys::ulpt_save_options::default();
        // SAFETY: as in default().
        check(unsafe { sys::ulpt_save_options_init(&mut raw, sys::ULPT_SAVE_OPTIONS_VERSION) })?;
        raw.dtype = self.dtype.to_raw();
        raw.level = self.level;
        Ok(raw)
    }
}

/// How [`Prompt::init_from_embeddings`](crate::Prompt::init_from_embeddings) fits
/// (`ulpt_fit_options`): at most `max_iters` rounds of alternating least squares,
/// stopping once a round lowers ‖E − T‖² by less than `tol` times its previous value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Rounds of alternating least squares (≥ 1).
    pub max_iters: u32,
    /// Relative decrease below which the rounds stop (≥ 0; 0 runs every round).
    pub tol: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        let mut raw = sys::ulpt_fit_options::default();
        // SAFETY: raw is a valid ulpt_fit_options of the version passed.
        let rc = unsafe { sys::ulpt_fit_options_init(&mut raw, sys::ULPT_FIT_OPTIONS_VERSION) };
        if rc != sys::ULPT_OK {
            init_failed("ulpt_fit_options_init", rc);
        }
        FitOptions { max_iters: raw.max_iters, tol: raw.tol }
    }
}

impl FitOptions {
    pub(crate) fn to_raw(&self) -> Result<sys::ulpt_fit_options> {
        let mut raw = sys::ulpt_fit_options::default();
        // SAFETY: as in default().
        check(unsafe { sys::ulpt_fit_options_init(&mut raw, sys::ULPT_FIT_OPTIONS_VERSION) })?;
        raw.max_iters = self.max_iters;
        raw.tol = self.tol;
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_their_c_values() {
        for k in [
            ProjectionKind::XavierUniform,
            ProjectionKind::KaimingUniform,
            ProjectionKind::Gaussian,
            ProjectionKind::Rademacher,
            ProjectionKind::Identity,
        ] {
            assert_eq!(ProjectionKind::from_raw(k.to_raw()), Some(k));
        }
        assert_eq!(ProjectionKind::Identity.to_raw(), sys::ULPT_PROJ_IDENTITY);
        assert_eq!(OptimizerKind::AdamW.to_raw(), sys::ULPT_OPT_ADAMW);
        assert_eq!(Schedule::Cosine.to_raw(), sys::ULPT_SCHED_COSINE);
        assert_eq!(Dtype::Bf16.to_raw(), sys::ULPT_DTYPE_BF16);
        assert_eq!(FileKind::Checkpoint.to_raw(), sys::ULPT_FILE_CHECKPOINT);
        assert_eq!(ProjectionKind::from_raw(99), None);
        assert_eq!(Dtype::from_raw(-1), None);
    }

    #[test]
    fn options_convert_to_the_c_structs() {
        let o = PromptOptions { no_shift: true, rank: 3, ..PromptOptions::new(6, 9) };
        let raw = o.to_raw().unwrap();
        assert_eq!(raw.version, sys::ULPT_PROMPT_OPTIONS_VERSION);
        assert_eq!((raw.n_tokens, raw.rank, raw.dim, raw.flags), (6, 3, 9, sys::ULPT_NO_SHIFT));
        let raw = OptimizerOptions::default().to_raw().unwrap();
        assert_eq!(raw.weight_decay, sys::ULPT_WEIGHT_DECAY_DEFAULT);
        let raw = OptimizerOptions { weight_decay: Some(0.5), ..Default::default() }.to_raw().unwrap();
        assert_eq!(raw.weight_decay, 0.5);
        let raw = SaveOptions { dtype: Dtype::F16, level: 0 }.to_raw().unwrap();
        assert_eq!((raw.version, raw.dtype, raw.level), (sys::ULPT_SAVE_OPTIONS_VERSION, sys::ULPT_DTYPE_F16, 0));
    }
}
