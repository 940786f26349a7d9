//! Guest compute kernels (SPIR-V): validation and instrumentation before anything reaches the
//! host driver.
//!
//! [`prepare`] takes the words a guest sent, refuses anything outside a small compute subset
//! ([`validate`]), reads what the engine needs to know (workgroup size, bindings, push-constant
//! size: [`facts`]) and rewrites the module so that it runs in bounded time ([`instrument`]):
//!
//! - every loop back edge counts against a per-invocation budget; once it is spent, every loop
//!   leaves through its merge block, and the entry point stores 1 into the control block's
//!   `status` before it returns;
//! - loads of the `NumWorkgroups` built-in read the control block's `grid` instead, because the
//!   engine runs a launch in pieces with `vkCmdDispatchBase`;
//! - dynamic indices into shared, private, function, push-constant and input memory are
//!   clamped ([`bounds`]): robust buffer access covers storage buffers only.
//!
//! Both the guest's module and the instrumented one must also pass the Khronos validator
//! ([`khronos`], SPIRV-Tools linked in: what `spirv-val` runs) for the Vulkan version their
//! SPIR-V version needs.
//!
//! The module is pure: no Vulkan, no engine. Every step is linear in the module's size, uses no
//! recursion and never panics on any input (the `spirv` fuzz target checks that).

mod bounds;
mod cfg;
mod facts;
mod instrument;
mod khronos;

pub use khronos::AVAILABLE as VALIDATOR_AVAILABLE;
mod parse;
mod sanitize;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vulkan_tests;

/// Descriptor binding (set 0) the engine reserves in every guest pipeline for its control block.
pub const CONTROL_BINDING: u32 = 8;
/// Guest bindings are set 0, bindings `0..MAX_BINDINGS` (storage buffers only).
pub const MAX_BINDINGS: u32 = 8;
/// Offset of the control block's `u32 status`: the instrumentation stores 1 there when an
/// invocation ran out of its loop budget.
pub const CONTROL_STATUS_OFFSET: u64 = 0;
/// Offset of the control block's `uvec3 grid`: the launch's whole grid in workgroups, which
/// loads of `NumWorkgroups` read instead of the built-in.
pub const CONTROL_GRID_OFFSET: u64 = 16;
/// Size of the control block (std430 StorageBuffer `Block` at set 0 / [`CONTROL_BINDING`]).
pub const CONTROL_BYTES: u64 = 32;
/// Largest id bound accepted: the SPIR-V specification's universal limit (4,194,303 ids).
pub const MAX_ID_BOUND: u32 = 4_194_304;
/// Most blocks in one function. The Khronos validator's structured-control-flow checks take
/// time quadratic in a function's blocks (dominator chains); this bounds them (a few hundred
/// milliseconds at the limit). Real kernels have tens to hundreds.
pub const MAX_FUNCTION_BLOCKS: usize = 1024;
/// Most blocks in the whole module.
pub const MAX_MODULE_BLOCKS: usize = 4096;
/// Largest loop budget honoured; larger budgets are lowered to it (the counter must not wrap).
pub const MAX_LOOP_BUDGET: u32 = 1 << 30;

/// What the device enabled, so modules needing more are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShaderFeatures {
    /// 64-bit integers (`Int64`).
    pub int64: bool,
    /// 64-bit floats (`Float64`).
    pub float64: bool,
    /// 16-bit integers in arithmetic (`Int16`).
    pub int16: bool,
    /// 8-bit integers in arithmetic (`Int8`).
    pub int8: bool,
    /// 16-bit floats in arithmetic (`Float16`).
    pub float16: bool,
    /// 16-bit types in storage buffers (`StorageBuffer16BitAccess`).
    pub storage_16bit: bool,
    /// 8-bit types in storage buffers (`StorageBuffer8BitAccess`).
    pub storage_8bit: bool,
    /// Subgroup operations (`GroupNonUniform*`) and the subgroup built-ins.
    pub subgroups: bool,
}

/// Limits a module must fit, from the device's limits and the daemon's policy.
#[derive(Debug, Clone)]
pub struct ModuleLimits {
    /// Largest module, in 32-bit words.
    pub max_words: usize,
    /// Largest workgroup size per dimension.
    pub max_workgroup_size: [u32; 3],
    /// Largest number of invocations in a workgroup.
    pub max_workgroup_invocations: u32,
    /// Largest total of `Workgroup` (shared) variables, in bytes.
    pub max_shared_bytes: u32,
    /// Largest push-constant block, in bytes.
    pub max_push_constant_bytes: u32,
    /// Loop back edges one invocation may take, all loops together (at most
    /// [`MAX_LOOP_BUDGET`]; 0 is treated as 1).
    pub loop_budget: u32,
    /// Optional shader features the device enabled.
    pub features: ShaderFeatures,
}

impl Default for ModuleLimits {
    /// Vulkan's guaranteed minimums (1024 invocations, 16 KiB shared, 128 bytes of push
    /// constants), 1 Mi words, a budget of 2^24 back edges and no optional features.
    fn default() -> Self {
        Self {
            max_words: 1 << 20,
            max_workgroup_size: [1024, 1024, 64],
            max_workgroup_invocations: 1024,
            max_shared_bytes: 16384,
            max_push_constant_bytes: 128,
            loop_budget: 1 << 24,
            features: ShaderFeatures::default(),
        }
    }
}

/// A module that passed validation, rewritten with the loop budget, ready for
/// `vkCreateShaderModule`.
#[derive(Debug, Clone)]
pub struct PreparedModule {
    /// The instrumented module.
    pub words: Vec<u32>,
    /// The entry point name (validated: exists, GLCompute).
    pub entry: String,
    /// Workgroup size (`LocalSize`/`LocalSizeId`, or the `WorkgroupSize` built-in constant;
    /// specialization constants count with their defaults).
    pub workgroup_size: [u32; 3],
    /// Bit b: guest binding b is declared by the module.
    pub bindings_used: u32,
    /// Bit b: the module may write binding b (not `NonWritable`).
    pub bindings_written: u32,
    /// Size of the push-constant block in bytes (0: none).
    pub push_constant_bytes: u32,
    /// Back edges instrumented.
    pub back_edges: u32,
    /// SPIR-V version (major, minor) of the module. The device must consume it: 1.0–1.3 need
    /// Vulkan 1.1, 1.4 Vulkan 1.2 (or 1.1 with `VK_KHR_spirv_1_4`), 1.5 Vulkan 1.2, 1.6 Vulkan 1.3.
    pub spirv_version: (u8, u8),
}

/// Why a module was refused. The text names the reason precisely (it is logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpirvError {
    /// More words than [`ModuleLimits::max_words`].
    #[error("module is {words} words, more than the limit of {limit}")]
    TooLarge {
        /// Words sent.
        words: usize,
        /// The limit.
        limit: usize,
    },
    /// The words are not a well-formed SPIR-V binary.
    #[error("not a SPIR-V module: {0}")]
    Parse(String),
    /// A SPIR-V version other than 1.0 to 1.6.
    #[error("SPIR-V version {0}.{1} is not supported (1.0 to 1.6)")]
    Version(u8, u8),
    /// The header's id bound is over [`MAX_ID_BOUND`].
    #[error("id bound {0} is over the limit of {MAX_ID_BOUND}")]
    IdBound(u32),
    /// A structural error in the module (ids, sections, operands).
    #[error("malformed module: {0}")]
    Malformed(String),
    /// A capability outside the allowlist (or one whose device feature is off).
    #[error("capability {0} is not allowed")]
    Capability(String),
    /// An extension outside the allowlist.
    #[error("extension {0:?} is not allowed")]
    Extension(String),
    /// An extended instruction set other than `GLSL.std.450`.
    #[error("extended instruction set {0:?} is not allowed")]
    ExtInstSet(String),
    /// Not `OpMemoryModel Logical GLSL450`.
    #[error("memory model {0} is not allowed (only Logical GLSL450)")]
    MemoryModel(String),
    /// No entry point of the requested name.
    #[error("entry point {0:?} not found")]
    EntryPointNotFound(String),
    /// More than one entry point.
    #[error("module has {0} entry points; exactly one is accepted")]
    EntryPointCount(usize),
    /// The entry point is not a compute shader.
    #[error("entry point {name:?} is a {model} shader, not GLCompute")]
    EntryPointModel {
        /// Entry point name.
        name: String,
        /// Its execution model.
        model: String,
    },
    /// An execution mode outside the allowlist (`LocalSize`, `LocalSizeId`).
    #[error("execution mode {0} is not allowed")]
    ExecutionMode(String),
    /// The workgroup size is missing, zero or over the limits.
    #[error("workgroup size {size:?} {reason}")]
    WorkgroupSize {
        /// The size found.
        size: [u32; 3],
        /// What is wrong with it.
        reason: String,
    },
    /// An instruction outside the compute subset.
    #[error("instruction Op{0} is not allowed")]
    Instruction(String),
    /// A type outside the compute subset.
    #[error("type {0} is not allowed")]
    Type(String),
    /// A storage class outside the compute subset.
    #[error("storage class {0} is not allowed")]
    StorageClass(String),
    /// A decoration outside the allowlist.
    #[error("decoration {0} is not allowed")]
    Decoration(String),
    /// An input built-in outside the allowlist.
    #[error("built-in {0} is not allowed")]
    BuiltIn(String),
    /// A descriptor set other than 0.
    #[error("storage buffer %{id} is in descriptor set {set}; only set 0 is allowed")]
    DescriptorSet {
        /// The variable.
        id: u32,
        /// Its set.
        set: u32,
    },
    /// A binding number outside `0..MAX_BINDINGS`.
    #[error("binding {0} outside 0..{MAX_BINDINGS}")]
    Binding(u32),
    /// Two storage buffers with one binding, or a buffer without a binding.
    #[error("{0}")]
    Bindings(String),
    /// The push-constant block is too large, or there are several.
    #[error("push constants: {0}")]
    PushConstants(String),
    /// Workgroup (shared) variables over the limit.
    #[error("shared memory is {bytes} bytes, more than the limit of {limit}")]
    SharedMemory {
        /// Bytes declared (with padding estimates).
        bytes: u64,
        /// The limit.
        limit: u32,
    },
    /// A type whose size cannot be computed or overflows.
    #[error("type %{0} has no computable size")]
    TypeSize(u32),
    /// A backward branch to a block that is not a loop header.
    #[error("unstructured back edge from block %{from} to %{to}")]
    UnstructuredBackEdge {
        /// The branching block.
        from: u32,
        /// Its backward target.
        to: u32,
    },
    /// A back edge to a loop header that the instrumentation cannot bound.
    #[error("back edge from block %{from} to loop header %{to}: {reason}")]
    BackEdge {
        /// The branching block.
        from: u32,
        /// The loop header.
        to: u32,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A function, or the module, has more blocks than [`MAX_FUNCTION_BLOCKS`] or
    /// [`MAX_MODULE_BLOCKS`].
    #[error("{what} has {blocks} blocks, more than the limit of {limit}")]
    Blocks {
        /// "function %N" or "the module".
        what: String,
        /// Blocks found.
        blocks: usize,
        /// The limit.
        limit: usize,
    },
    /// The call graph has a cycle.
    #[error("recursion: function %{0} can call itself")]
    Recursion(u32),
    /// The call graph, inlined, is too large (drivers inline every call).
    #[error("functions inline to more than {0} instructions")]
    InlinedSize(u64),
    /// The Khronos validator (what `spirv-val` runs) refused the module.
    #[error("invalid SPIR-V: {0}")]
    Invalid(String),
    /// The instrumented module failed the Khronos validator (a bug of the instrumentation).
    #[error("instrumented module failed validation: {0}")]
    Instrumented(String),
    /// A use of the `NumWorkgroups` built-in other than a load.
    #[error("NumWorkgroups is used by Op{0}; only loads are allowed")]
    NumWorkgroupsUse(String),
}

/// Validates `words` as a compute module with entry point `entry` within `limits`, and returns
/// it instrumented with the loop budget and the control block. Never panics; linear time.
pub fn prepare(
    words: &[u32],
    entry: &str,
    limits: &ModuleLimits,
) -> Result<PreparedModule, SpirvError> {
    if words.len() > limits.max_words {
        return Err(SpirvError::TooLarge {
            words: words.len(),
            limit: limits.max_words,
        });
    }
    let module = parse::load(words)?;
    let facts = validate::check(&module, entry, limits)?;
    khronos::validate(words, facts.version.1).map_err(SpirvError::Invalid)?;
    let budget = limits.loop_budget.clamp(1, MAX_LOOP_BUDGET);
    let (words, back_edges) = instrument::rewrite(module, &facts, budget)?;
    // A safety net: the rewrite is tested to keep modules valid; if it ever did not, the module
    // is refused rather than handed to the driver.
    khronos::validate(&words, facts.version.1).map_err(SpirvError::Instrumented)?;
    Ok(PreparedModule {
        words,
        entry: entry.to_owned(),
        workgroup_size: facts.workgroup_size,
        bindings_used: facts.bindings_used,
        bindings_written: facts.bindings_written,
        push_constant_bytes: facts.push_constant_bytes,
        back_edges,
        spirv_version: facts.version,
    })
}
