//! The Khronos SPIR-V validator (SPIRV-Tools' `spvValidateBinary`, what `spirv-val` runs),
//! linked from the system's `spirv-tools` package (`libSPIRV-Tools.a`, C API).
//!
//! It checks everything this module's own allowlist does not: types of every operand, SSA
//! dominance, structured control flow rules, the Vulkan environment's rules. A module reaches
//! the driver's compiler only if both the guest's input and the instrumented output pass it.

/// True when vgpud was built with SPIRV-Tools (see `backend/build.rs`); without it no guest
/// module is accepted.
pub const AVAILABLE: bool = cfg!(spirv_tools);

#[cfg(not(spirv_tools))]
/// Without SPIRV-Tools every module is refused.
pub(super) fn validate(_words: &[u32], _minor: u8) -> Result<(), String> {
    Err("vgpud was built without the SPIR-V validator (SPIRV-Tools)".into())
}

#[cfg(spirv_tools)]
pub(super) use linked::validate;

#[cfg(spirv_tools)]
mod linked {
    use std::ffi::{c_char, c_int, c_void, CStr};

    #[repr(C)]
    struct Position {
        line: usize,
        column: usize,
        index: usize,
    }

    #[repr(C)]
    struct Diagnostic {
        position: Position,
        error: *mut c_char,
        is_text_source: bool,
    }

    // `-bundle`: the archive is named to the final link (which finds it in the system library
    // path) instead of being copied into this crate's rlib.
    #[link(name = "SPIRV-Tools", kind = "static", modifiers = "-bundle")]
    #[link(name = "stdc++")]
    extern "C" {
        fn spvContextCreate(env: c_int) -> *mut c_void;
        fn spvContextDestroy(context: *mut c_void);
        fn spvValidateBinary(
            context: *const c_void,
            words: *const u32,
            num_words: usize,
            diagnostic: *mut *mut Diagnostic,
        ) -> c_int;
        fn spvDiagnosticDestroy(diagnostic: *mut Diagnostic);
    }

    /// `spv_target_env` values (libspirv.h).
    const SPV_ENV_VULKAN_1_1: c_int = 18;
    const SPV_ENV_VULKAN_1_1_SPIRV_1_4: c_int = 21;
    const SPV_ENV_VULKAN_1_2: c_int = 23;
    const SPV_ENV_VULKAN_1_3: c_int = 25;

    /// The Vulkan environment a module of SPIR-V 1.`minor` needs (the oldest Vulkan that
    /// consumes it): 1.0-1.3 → Vulkan 1.1, 1.4 → Vulkan 1.1 + VK_KHR_spirv_1_4, 1.5 → Vulkan 1.2,
    /// 1.6 → Vulkan 1.3.
    fn environment(minor: u8) -> c_int {
        match minor {
            0..=3 => SPV_ENV_VULKAN_1_1,
            4 => SPV_ENV_VULKAN_1_1_SPIRV_1_4,
            5 => SPV_ENV_VULKAN_1_2,
            _ => SPV_ENV_VULKAN_1_3,
        }
    }

    /// Validates `words` (SPIR-V 1.`minor`) in its Vulkan environment; the error is the
    /// validator's message.
    pub(in super::super) fn validate(words: &[u32], minor: u8) -> Result<(), String> {
        // SAFETY: the context is created and destroyed here; `words` outlives the call; the
        // diagnostic, when the validator makes one, is read (its message is a C string) and
        // destroyed here.
        unsafe {
            let context = spvContextCreate(environment(minor));
            if context.is_null() {
                return Err("the SPIR-V validator could not start".into());
            }
            let mut diagnostic: *mut Diagnostic = std::ptr::null_mut();
            let result = spvValidateBinary(context, words.as_ptr(), words.len(), &mut diagnostic);
            let message = diagnostic
                .as_ref()
                .filter(|d| !d.error.is_null())
                .map(|d| one_line(&CStr::from_ptr(d.error).to_string_lossy()));
            spvDiagnosticDestroy(diagnostic);
            spvContextDestroy(context);
            if result == 0 {
                Ok(())
            } else {
                Err(message.unwrap_or_else(|| format!("validator result {result}")))
            }
        }
    }

    /// The validator's message on one line, at most 400 characters (it is logged).
    fn one_line(message: &str) -> String {
        let mut s: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some((at, _)) = s.char_indices().nth(400) {
            s.truncate(at);
            s.push('…');
        }
        s
    }
}
