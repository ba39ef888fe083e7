//! Counters for `--stats`.

use crate::plan::HelperKind;
use std::fmt;

/// How a unit run by the translator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitKind {
    /// The fragment ran to its end.
    End = 0,
    /// An instruction ended it early (a restart or a store to code).
    Event,
    /// An instruction faulted; the exception was delivered.
    Fault,
    /// The fragment ended on HLT.
    Halt,
}

impl ExitKind {
    /// Number of kinds.
    pub const COUNT: usize = 4;
    const NAMES: [&'static str; Self::COUNT] = ["end", "event", "fault", "halt"];
}

/// Why a unit ran on the embedded interpreter instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Delegation {
    /// Interrupt shadow, TF, RF or armed breakpoints: one instruction at a time.
    SingleStep = 0,
    /// CS limit, fetch fault or an empty unit: the interpreter raises the fault.
    Fetch,
    /// The code buffer could not be (re)allocated.
    NoBuffer,
    /// A 64-bit unit that would be mostly helper calls (`HELPER_HEAVY` in
    /// `engine.rs`): the interpreter runs it, and its slot says so.
    HelperHeavy,
}

impl Delegation {
    /// Number of reasons.
    pub const COUNT: usize = 4;
    const NAMES: [&'static str; Self::COUNT] =
        ["single-step", "fetch", "no-buffer", "helper-heavy"];
}

/// Translator counters.
#[derive(Clone, Debug, Default)]
pub struct JitStats {
    /// Units translated.
    pub translations: u64,
    /// Instructions in all translated units.
    pub translated_insns: u64,
    /// Of those, lowered inline (IDENT or inline branch).
    pub inline_insns: u64,
    /// Units found in the translation cache.
    pub hits: u64,
    /// Units left to the embedded interpreter at translation time (helper-heavy
    /// 64-bit units), not counted in `translations`.
    pub interp_units: u64,
    /// Translations dropped because their code was written.
    pub invalidations: u64,
    /// Full flushes of the code buffer.
    pub flushes: u64,
    /// Bytes of host code emitted.
    pub code_bytes: u64,
    /// Wall time spent translating, in ns.
    pub translate_ns: u64,
    /// Fragment exits by [`ExitKind`].
    pub exits: [u64; ExitKind::COUNT],
    /// Units run by the embedded interpreter, by [`Delegation`].
    pub delegated: [u64; Delegation::COUNT],
    /// Helper calls by [`HelperKind`].
    pub helper_calls: [u64; HelperKind::COUNT],
    /// Links made from a fragment's exit to another fragment.
    pub links: u64,
    /// Jump-cache entries made.
    pub jc_fills: u64,
    /// Times the jump cache was emptied (TLB flushes, memory map changes).
    pub jc_clears: u64,
    /// Fast-TLB fills asked for by inline memory accesses that missed.
    pub tlb_fills: u64,
    /// Fills that installed an entry (the rest ran through the helper).
    pub tlb_fills_ok: u64,
}

fn list(names: &[&str], counts: &[u64]) -> String {
    names
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n != 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for JitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.translations.max(1) as f64;
        writeln!(
            f,
            "translator: {} translations ({} hits), mean unit {:.2} instructions, {:.1}% inline, {} KiB of host code",
            self.translations,
            self.hits,
            self.translated_insns as f64 / t,
            100.0 * self.inline_insns as f64 / self.translated_insns.max(1) as f64,
            self.code_bytes / 1024
        )?;
        writeln!(
            f,
            "translator: {} invalidations, {} full flushes, {:.1} µs per translation ({:.3} s in all)",
            self.invalidations,
            self.flushes,
            self.translate_ns as f64 / t / 1e3,
            self.translate_ns as f64 / 1e9
        )?;
        writeln!(
            f,
            "translator exits: {}; {} links made, {} jump-cache entries made, jump cache emptied {} times (chained entries are not counted: a counter would cost each one a memory round trip)",
            list(&ExitKind::NAMES, &self.exits),
            self.links,
            self.jc_fills,
            self.jc_clears
        )?;
        writeln!(
            f,
            "translator helper calls: {}; fast-TLB fills {} ({} installed)",
            list(&HelperKind::NAMES, &self.helper_calls),
            self.tlb_fills,
            self.tlb_fills_ok
        )?;
        write!(
            f,
            "translator delegated units: {}; {} units left to the interpreter when translated",
            list(&Delegation::NAMES, &self.delegated),
            self.interp_units
        )
    }
}
