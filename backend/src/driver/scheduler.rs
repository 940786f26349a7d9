//! The device scheduler's policy core: which vGPU gets the engine next and for how long.
//!
//! Pure bookkeeping with no threads or clocks (the device thread feeds it measured times), so
//! it is tested deterministically.
//!
//! **Algorithm.** Every vGPU has a virtual time advanced at each of its turns by
//! `timeslice / weight` (stride scheduling); the next turn goes to the eligible vGPU with the
//! smallest virtual time, ties to the one served least recently. Weights are 1 under best-effort
//! and equal-share and the type weight under fixed-share, so turns (of one time slice each) come
//! in proportion to weight. A turn that ends before its target (the vGPU ran out of work, or was
//! preempted by a waking vGPU) is charged only the time it used: the unused part of the stride is
//! refunded, so the vGPU keeps the rest of its share of the round.
//!
//! Under **best-effort** only vGPUs with work are eligible: an idle vGPU gives up its turn, and
//! when it wakes its virtual time is raised to the scheduler's virtual clock (lag clamped, EEVDF
//! style), so idling banks no credit.
//!
//! Under **equal-share** and **fixed-share** a vGPU's share — 1/N of time with N vGPUs created,
//! or weight/Σweight — is held and never given away: vGPUs with work may run only while their
//! virtual time is less than one round (the largest stride, `max timeslice/weight`) ahead of the
//! idle vGPU furthest behind; when none may, that idle vGPU gets a *reserved* turn and the engine
//! idles for its slice (or runs its work at once if it gets some). So an idle vGPU's slot is
//! deferred to the end of the round rather than idled at once, and the idle time it is owed is
//! still spent idle, charged to it, before the busy vGPUs start another round: every busy vGPU
//! gets exactly its share of wall time, an idle vGPU lags at most one round (it banks no credit
//! beyond it), and the engine idles for exactly the share the idle vGPUs leave unused.
//!
//! **Waking.** A vGPU that wakes owing time (its virtual time behind the running turn's position,
//! `start + used/weight`) preempts the running turn at the next chunk boundary
//! ([`SchedCore::should_preempt`]); the preempted vGPU is refunded what it did not use and
//! resumes at its next turn. So a light vGPU waits about one chunk, not a round, while shares
//! stay exact (time is charged as used). Under best-effort a woken vGPU sits at the virtual clock,
//! so it preempts a turn that started there.
//!
//! **Overruns.** The time actually used, overrun included, is charged: a slice ends at the first
//! chunk boundary past its target, and the overshoot becomes debt that shortens the vGPU's next
//! slice (NVIDIA-style compensation); debt of a whole slice or more skips the turn. Debt is
//! capped at [`MAX_DEBT_SLICES`] slices so one host stall cannot starve a vGPU for long.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Default time slice with at most [`DENSE_VGPU_COUNT`] vGPUs (µs).
pub const DEFAULT_TIMESLICE_US: u32 = 2000;
/// Default time slice with more than [`DENSE_VGPU_COUNT`] vGPUs (µs).
pub const DENSE_TIMESLICE_US: u32 = 1000;
/// vGPU count above which the shorter default slice applies.
pub const DENSE_VGPU_COUNT: usize = 8;
/// Debt is capped at this many time slices.
pub const MAX_DEBT_SLICES: u64 = 8;
/// Virtual-time units per nanosecond of nominal slice (keeps strides integral for any weight).
const VTIME_SCALE: u128 = 1 << 20;

/// Scheduling policy, with NVIDIA vGPU's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Round robin among vGPUs with work; idle vGPUs give up their turn.
    #[default]
    BestEffort,
    /// Each vGPU gets 1/N of the time (N = vGPUs created), held even when idle.
    EqualShare,
    /// Each vGPU gets weight/Σweight of the time, held even when idle.
    FixedShare,
}

impl Policy {
    /// `best-effort`, `equal-share` or `fixed-share`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::BestEffort => "best-effort",
            Policy::EqualShare => "equal-share",
            Policy::FixedShare => "fixed-share",
        }
    }

    /// Whether an idle vGPU's share is kept for it (the engine idles rather than give it away).
    pub fn holds_share(self) -> bool {
        self != Policy::BestEffort
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown scheduling policy {0:?} (best-effort, equal-share or fixed-share)")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "best-effort" | "best_effort" => Ok(Policy::BestEffort),
            "equal-share" | "equal_share" => Ok(Policy::EqualShare),
            "fixed-share" | "fixed_share" => Ok(Policy::FixedShare),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

/// One scheduling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The vGPU whose turn it is.
    pub vgpu: u32,
    /// The slice budget: the nominal slice less debt.
    pub target_ns: u64,
    /// The vGPU's nominal slice.
    pub timeslice_ns: u64,
    /// The vGPU had no work when picked (a held share: the engine idles for it).
    pub reserved: bool,
    /// The vGPU's virtual time when the turn started.
    vstart: u128,
}

#[derive(Debug, Clone)]
struct Entity {
    id: u32,
    weight: u32,
    timeslice_us: Option<u32>,
    vtime: u128,
    debt_ns: u64,
    last_turn: u64,
    has_work: bool,
    /// Got work since its last turn started (it may preempt; see `should_preempt`).
    woken: bool,
}

/// The scheduler's state for all vGPUs of one device.
#[derive(Debug, Clone)]
pub struct SchedCore {
    policy: Policy,
    timeslice_us: Option<u32>,
    entities: Vec<Entity>,
    vclock: u128,
    turns: u64,
    skipped: u64,
}

impl SchedCore {
    /// A scheduler with `policy` and a fixed device slice, or `None` for the default
    /// (2000 µs with ≤ 8 vGPUs, 1000 µs above).
    pub fn new(policy: Policy, timeslice_us: Option<u32>) -> Self {
        Self {
            policy,
            timeslice_us,
            entities: Vec::new(),
            vclock: 0,
            turns: 0,
            skipped: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Switches the policy; every vGPU keeps its place in virtual time, debts included.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Sets the device time slice (`None`: the default by vGPU count); the next turn uses it.
    pub fn set_timeslice_us(&mut self, timeslice_us: Option<u32>) {
        self.timeslice_us = timeslice_us;
    }

    /// The device time slice now in force (µs).
    pub fn device_timeslice_us(&self) -> u32 {
        self.timeslice_us
            .unwrap_or(if self.entities.len() > DENSE_VGPU_COUNT {
                DENSE_TIMESLICE_US
            } else {
                DEFAULT_TIMESLICE_US
            })
    }

    fn find(&self, id: u32) -> Option<&Entity> {
        self.entities.iter().find(|e| e.id == id)
    }

    fn find_mut(&mut self, id: u32) -> Option<&mut Entity> {
        self.entities.iter_mut().find(|e| e.id == id)
    }

    /// vGPU `id`'s time slice (µs): its type's, else the device's.
    pub fn timeslice_us(&self, id: u32) -> u32 {
        self.find(id)
            .and_then(|e| e.timeslice_us)
            .unwrap_or_else(|| self.device_timeslice_us())
    }

    fn weight(&self, e: &Entity) -> u128 {
        match self.policy {
            Policy::FixedShare => u128::from(e.weight.max(1)),
            Policy::BestEffort | Policy::EqualShare => 1,
        }
    }

    /// Registers vGPU `id` with its type weight and optional type time slice. It starts at the
    /// virtual clock, idle.
    pub fn add(&mut self, id: u32, weight: u32, timeslice_us: Option<u32>) {
        self.remove(id);
        self.entities.push(Entity {
            id,
            weight,
            timeslice_us,
            vtime: self.vclock,
            debt_ns: 0,
            last_turn: 0,
            has_work: false,
            woken: false,
        });
    }

    /// Forgets vGPU `id`.
    pub fn remove(&mut self, id: u32) {
        self.entities.retain(|e| e.id != id);
    }

    /// Number of vGPUs registered.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether no vGPU is registered.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Number of vGPUs with work.
    pub fn busy_count(&self) -> usize {
        self.entities.iter().filter(|e| e.has_work).count()
    }

    /// Number of vGPUs other than `id` with work.
    pub fn busy_others(&self, id: u32) -> usize {
        self.entities
            .iter()
            .filter(|e| e.has_work && e.id != id)
            .count()
    }

    /// Turns skipped to repay debt so far.
    pub fn skipped_turns(&self) -> u64 {
        self.skipped
    }

    /// vGPU `id`'s current debt (ns).
    pub fn debt_ns(&self, id: u32) -> u64 {
        self.find(id).map_or(0, |e| e.debt_ns)
    }

    /// Records whether vGPU `id` has work; returns whether it just woke (had none before).
    /// Under best-effort a vGPU that wakes is placed no earlier than the virtual clock, so time
    /// spent idle is not banked.
    pub fn set_has_work(&mut self, id: u32, has_work: bool) -> bool {
        let clamp = !self.policy.holds_share();
        let vclock = self.vclock;
        let Some(e) = self.find_mut(id) else {
            return false;
        };
        let woke = has_work && !e.has_work;
        if woke && clamp {
            e.vtime = e.vtime.max(vclock);
        }
        e.has_work = has_work;
        e.woken = has_work && (e.woken || woke);
        woke
    }

    /// How far (virtual time) a vGPU with work may run ahead of the idle vGPU furthest behind
    /// under a held-share policy: one round, the largest stride `timeslice / weight`.
    fn round_vtime(&self) -> u128 {
        self.entities
            .iter()
            .map(|e| self.stride(e))
            .max()
            .unwrap_or(0)
    }

    fn stride(&self, e: &Entity) -> u128 {
        u128::from(self.timeslice_us(e.id)) * 1000 * VTIME_SCALE / self.weight(e)
    }

    /// Whether `turn`, `used_ns` into it, should end at this chunk boundary because a vGPU that
    /// woke since its last turn is behind it in virtual time (it owes that vGPU time in this
    /// round). vGPUs that stayed busy never preempt each other.
    pub fn should_preempt(&self, turn: &Turn, used_ns: u64) -> bool {
        let Some(me) = self.find(turn.vgpu) else {
            return true;
        };
        let position = turn.vstart + u128::from(used_ns) * VTIME_SCALE / self.weight(me);
        self.entities
            .iter()
            .any(|e| e.id != turn.vgpu && e.woken && e.vtime < position)
    }

    /// The share of device time vGPU `id` is entitled to, in permille: best-effort 1/(vGPUs
    /// with work, counting itself), equal-share 1/N, fixed-share weight/Σweight.
    pub fn share_permille(&self, id: u32) -> u32 {
        let Some(me) = self.find(id) else { return 0 };
        let (mine, total) = match self.policy {
            Policy::BestEffort => (1, self.busy_others(id) as u64 + 1),
            Policy::EqualShare => (1, self.entities.len() as u64),
            Policy::FixedShare => (
                u64::from(me.weight.max(1)),
                self.entities
                    .iter()
                    .map(|e| u64::from(e.weight.max(1)))
                    .sum(),
            ),
        };
        u32::try_from(mine * 1000 / total.max(1)).unwrap_or(1000)
    }

    /// Chooses the next turn, or `None` when no vGPU has work (the engine sleeps).
    pub fn pick(&mut self) -> Option<Turn> {
        if !self.entities.iter().any(|e| e.has_work) {
            return None;
        }
        let hold = self.policy.holds_share();
        // Each skip lowers a debt capped at MAX_DEBT_SLICES slices, so this terminates; the bound
        // is a backstop.
        let max_iterations = (self.entities.len() as u64 + 1) * (MAX_DEBT_SLICES + 2);
        for _ in 0..max_iterations {
            // Held shares: vGPUs with work may run up to one round ahead of the idle vGPU
            // furthest behind; past that the engine idles for that vGPU (a reserved turn).
            let limit = if hold {
                self.entities
                    .iter()
                    .filter(|e| !e.has_work)
                    .map(|e| e.vtime)
                    .min()
                    .map(|floor| floor + self.round_vtime())
            } else {
                None
            };
            let runnable = self
                .entities
                .iter()
                .enumerate()
                .filter(|(_, e)| e.has_work && limit.is_none_or(|l| e.vtime < l))
                .min_by_key(|(_, e)| (e.vtime, e.last_turn))
                .map(|(i, _)| i);
            let index = match runnable {
                Some(i) => i,
                None => self
                    .entities
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| !e.has_work)
                    .min_by_key(|(_, e)| (e.vtime, e.last_turn))
                    .map(|(i, _)| i)?,
            };
            let timeslice_ns = u64::from(self.timeslice_us(self.entities[index].id)) * 1000;
            let stride = self.stride(&self.entities[index]);
            self.turns += 1;
            let turn_seq = self.turns;
            let e = &mut self.entities[index];
            let vstart = e.vtime;
            e.woken = false;
            self.vclock = self.vclock.max(vstart);
            e.vtime += stride;
            // A reserved turn does not count as service: an idle vGPU that wakes wins ties.
            if e.has_work {
                e.last_turn = turn_seq;
            }
            if e.debt_ns >= timeslice_ns {
                e.debt_ns -= timeslice_ns;
                self.skipped += 1;
                continue;
            }
            return Some(Turn {
                vgpu: e.id,
                target_ns: timeslice_ns - e.debt_ns,
                timeslice_ns,
                reserved: !e.has_work,
                vstart,
            });
        }
        None
    }

    /// Charges a turn that took `elapsed_ns` of device time (busy or held idle). The overshoot
    /// past the target replaces the debt that shortened this slice; a turn that ended before its
    /// target (the vGPU ran out of work, or a waking vGPU preempted it) is charged only the time
    /// it used, so the vGPU keeps the rest of its round.
    pub fn account(&mut self, turn: &Turn, elapsed_ns: u64) {
        let unused = turn.target_ns.saturating_sub(elapsed_ns);
        let refund = self
            .find(turn.vgpu)
            .map_or(0, |e| u128::from(unused) * VTIME_SCALE / self.weight(e));
        if let Some(e) = self.find_mut(turn.vgpu) {
            e.vtime = e.vtime.saturating_sub(refund).max(turn.vstart);
            let paid = turn.timeslice_ns.saturating_sub(turn.target_ns);
            let overshoot = elapsed_ns.saturating_sub(turn.target_ns);
            let cap = turn.timeslice_ns.saturating_mul(MAX_DEBT_SLICES);
            e.debt_ns = e
                .debt_ns
                .saturating_sub(paid)
                .saturating_add(overshoot)
                .min(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Simulates `turns` turns where busy vGPUs use `run(id, target)` ns and idle reserved turns
    /// take their target; returns device time per vGPU and the idle time.
    fn simulate(
        core: &mut SchedCore,
        turns: usize,
        mut run: impl FnMut(u32, u64) -> u64,
    ) -> (BTreeMap<u32, u64>, u64) {
        let mut used = BTreeMap::new();
        let mut idle = 0;
        for _ in 0..turns {
            let Some(turn) = core.pick() else { break };
            let elapsed = if turn.reserved {
                idle += turn.target_ns;
                turn.target_ns
            } else {
                let t = run(turn.vgpu, turn.target_ns);
                *used.entry(turn.vgpu).or_insert(0) += t;
                t
            };
            core.account(&turn, elapsed);
        }
        (used, idle)
    }

    fn share(used: &BTreeMap<u32, u64>, id: u32, total: u64) -> f64 {
        used.get(&id).copied().unwrap_or(0) as f64 / total as f64
    }

    #[test]
    fn policy_names_roundtrip() {
        for p in [Policy::BestEffort, Policy::EqualShare, Policy::FixedShare] {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
        }
        assert!("fair".parse::<Policy>().is_err());
    }

    #[test]
    fn default_slice_depends_on_count() {
        let mut core = SchedCore::new(Policy::BestEffort, None);
        for id in 0..8 {
            core.add(id, 1, None);
        }
        assert_eq!(core.device_timeslice_us(), 2000);
        core.add(8, 1, Some(5000));
        assert_eq!(core.device_timeslice_us(), 1000);
        assert_eq!(core.timeslice_us(8), 5000);
        assert_eq!(core.timeslice_us(0), 1000);
        assert_eq!(
            SchedCore::new(Policy::BestEffort, Some(3000)).device_timeslice_us(),
            3000
        );
    }

    #[test]
    fn best_effort_round_robin_and_idle_gives_up_turn() {
        let mut core = SchedCore::new(Policy::BestEffort, None);
        for id in 1..=4 {
            core.add(id, 1, None);
        }
        for id in 1..=3 {
            core.set_has_work(id, true);
        }
        let order: Vec<u32> = (0..6)
            .map(|_| {
                let t = core.pick().unwrap();
                core.account(&t, t.target_ns);
                t.vgpu
            })
            .collect();
        assert_eq!(order, vec![1, 2, 3, 1, 2, 3]);
        let (used, idle) = simulate(&mut core, 3000, |_, target| target);
        assert_eq!(idle, 0);
        let total: u64 = used.values().sum();
        for id in 1..=3 {
            assert!((share(&used, id, total) - 1.0 / 3.0).abs() < 0.01);
        }
        assert_eq!(core.share_permille(1), 333);
        assert_eq!(core.share_permille(4), 250);
    }

    #[test]
    fn equal_share_holds_idle_share() {
        let mut core = SchedCore::new(Policy::EqualShare, None);
        for id in 1..=4 {
            core.add(id, 1, None);
        }
        for id in 1..=3 {
            core.set_has_work(id, true);
        }
        let (used, idle) = simulate(&mut core, 4000, |_, target| target);
        let total = used.values().sum::<u64>() + idle;
        for id in 1..=3 {
            assert!((share(&used, id, total) - 0.25).abs() < 0.01);
        }
        assert!((idle as f64 / total as f64 - 0.25).abs() < 0.01);
        assert_eq!(core.share_permille(4), 250);
        // Nobody has work: the engine sleeps.
        for id in 1..=3 {
            core.set_has_work(id, false);
        }
        assert!(core.pick().is_none());
    }

    #[test]
    fn fixed_share_follows_weights_and_holds() {
        let mut core = SchedCore::new(Policy::FixedShare, None);
        core.add(1, 1, None);
        core.add(2, 2, None);
        core.add(4, 4, None);
        for id in [1, 2, 4] {
            core.set_has_work(id, true);
        }
        let (used, idle) = simulate(&mut core, 7000, |_, target| target);
        assert_eq!(idle, 0);
        let total: u64 = used.values().sum();
        for (id, want) in [(1, 1.0 / 7.0), (2, 2.0 / 7.0), (4, 4.0 / 7.0)] {
            assert!((share(&used, id, total) - want).abs() < 0.01, "{id}");
        }
        assert_eq!(core.share_permille(4), 571);
        // vGPU 4 goes idle: its 4/7 is held, not given to the others.
        core.set_has_work(4, false);
        let (used, idle) = simulate(&mut core, 7000, |_, target| target);
        let total = used.values().sum::<u64>() + idle;
        assert!((idle as f64 / total as f64 - 4.0 / 7.0).abs() < 0.01);
        assert!((share(&used, 2, total) - 2.0 / 7.0).abs() < 0.01);
    }

    #[test]
    fn overrun_becomes_debt_and_shortens_next_slice() {
        let mut core = SchedCore::new(Policy::BestEffort, Some(2000));
        core.add(1, 1, None);
        core.add(2, 1, None);
        core.set_has_work(1, true);
        core.set_has_work(2, true);
        let t = core.pick().unwrap();
        assert_eq!((t.vgpu, t.target_ns), (1, 2_000_000));
        core.account(&t, 2_600_000); // overran by 0.6 ms
        assert_eq!(core.debt_ns(1), 600_000);
        let t2 = core.pick().unwrap();
        assert_eq!((t2.vgpu, t2.target_ns), (2, 2_000_000));
        core.account(&t2, 2_000_000);
        let t3 = core.pick().unwrap();
        assert_eq!((t3.vgpu, t3.target_ns), (1, 1_400_000));
        core.account(&t3, 1_400_000);
        assert_eq!(core.debt_ns(1), 0);
        // Overrunning by more than a slice skips the next turn entirely.
        let t4 = core.pick().unwrap();
        core.account(&t4, 2_000_000);
        let t5 = core.pick().unwrap();
        assert_eq!(t5.vgpu, 1);
        core.account(&t5, 4_500_000);
        assert_eq!(core.debt_ns(1), 2_500_000);
        let order: Vec<(u32, u64)> = (0..3)
            .map(|_| {
                let t = core.pick().unwrap();
                core.account(&t, t.target_ns);
                (t.vgpu, t.target_ns)
            })
            .collect();
        assert_eq!(order, vec![(2, 2_000_000), (2, 2_000_000), (1, 1_500_000)]);
        assert_eq!(core.skipped_turns(), 1);
        // Debt is capped.
        let t = core.pick().unwrap();
        core.account(&t, u64::MAX);
        assert!(core.debt_ns(t.vgpu) <= MAX_DEBT_SLICES * 2_000_000);
    }

    #[test]
    fn long_chunks_are_compensated_over_time() {
        // vGPU 1's chunks are 5 ms (non-preemptible); vGPU 2's are fine-grained.
        let mut core = SchedCore::new(Policy::BestEffort, Some(2000));
        core.add(1, 1, None);
        core.add(2, 1, None);
        core.set_has_work(1, true);
        core.set_has_work(2, true);
        let (used, _) = simulate(&mut core, 5000, |id, target| {
            if id == 1 {
                target.div_ceil(5_000_000) * 5_000_000
            } else {
                target
            }
        });
        let total: u64 = used.values().sum();
        assert!((share(&used, 1, total) - 0.5).abs() < 0.02, "{used:?}");
    }

    #[test]
    fn waking_vgpu_banks_no_credit_and_waits_at_most_one_round() {
        let mut core = SchedCore::new(Policy::BestEffort, None);
        for id in 1..=4 {
            core.add(id, 1, None);
        }
        for id in 1..=3 {
            core.set_has_work(id, true);
        }
        simulate(&mut core, 3000, |_, target| target);
        // vGPU 4 slept through 3000 turns; it must not now monopolise the engine.
        core.set_has_work(4, true);
        let mut waited = 0;
        loop {
            let t = core.pick().unwrap();
            core.account(&t, t.target_ns);
            if t.vgpu == 4 {
                break;
            }
            waited += 1;
        }
        assert!(waited <= 3, "waited {waited} turns");
        let (used, _) = simulate(&mut core, 400, |_, target| target);
        let total: u64 = used.values().sum();
        assert!((share(&used, 4, total) - 0.25).abs() < 0.02);
    }

    #[test]
    fn held_share_defers_idle_slot_and_waking_vgpu_is_served_promptly() {
        let mut core = SchedCore::new(Policy::EqualShare, None);
        for id in 1..=4 {
            core.add(id, 1, None);
        }
        for id in 1..=3 {
            core.set_has_work(id, true);
        }
        // The idle vGPU's slot comes at the end of the round, not in the middle of it.
        let order: Vec<(u32, bool)> = (0..8)
            .map(|_| {
                let t = core.pick().unwrap();
                core.account(&t, t.target_ns);
                (t.vgpu, t.reserved)
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (1, false),
                (2, false),
                (3, false),
                (4, true),
                (1, false),
                (2, false),
                (3, false),
                (4, true)
            ]
        );
        // vGPU 4 wakes during vGPU 1's turn: owed time, it preempts at the next chunk boundary.
        let t = core.pick().unwrap();
        assert_eq!(t.vgpu, 1);
        assert!(core.set_has_work(4, true));
        assert!(!core.set_has_work(4, true), "already awake");
        assert!(core.should_preempt(&t, 100_000));
        core.account(&t, 100_000);
        let light = core.pick().unwrap();
        assert_eq!((light.vgpu, light.reserved), (4, false));
        // It runs 50 µs and goes idle: charged 50 µs, not a slice.
        core.account(&light, 50_000);
        core.set_has_work(4, false);
        // vGPU 1 was refunded what it did not use; 2 and 3, further behind, go first.
        let next: Vec<u32> = (0..3)
            .map(|_| {
                let t = core.pick().unwrap();
                core.account(&t, t.target_ns);
                t.vgpu
            })
            .collect();
        assert_eq!(next, vec![2, 3, 1]);
        // Wakes again mid-round: still owed most of its slice, so again prompt.
        let t = core.pick().unwrap();
        core.set_has_work(4, true);
        assert!(core.should_preempt(&t, 10_000));
        // Busy vGPUs behind the running one do not preempt it; only a woken one does.
        core.set_has_work(4, false);
        assert!(!core.should_preempt(&t, 10_000));
    }

    #[test]
    fn held_shares_stay_exact_with_a_light_vgpu_waking_often() {
        for policy in [Policy::EqualShare, Policy::FixedShare] {
            let mut core = SchedCore::new(policy, None);
            let weights = [1, 1, 2, 4];
            for (id, w) in weights.iter().enumerate() {
                core.add(id as u32, *w, None);
            }
            for id in 1..4 {
                core.set_has_work(id, true);
            }
            let mut used = BTreeMap::new();
            let (mut idle, mut now) = (0u64, 0u64);
            let mut light_wakes_at = 3_000_000u64;
            for _ in 0..20_000 {
                let t = core.pick().unwrap();
                let mut elapsed = if t.reserved {
                    t.target_ns
                } else {
                    t.target_ns + 20_000
                };
                // The light vGPU (0) wakes every 5 ms; it preempts at the next 100 µs chunk and
                // runs 60 µs.
                if now + elapsed >= light_wakes_at && t.vgpu != 0 {
                    core.set_has_work(0, true);
                    let at = light_wakes_at.saturating_sub(now).div_ceil(100_000) * 100_000;
                    if at < elapsed && core.should_preempt(&t, at) {
                        elapsed = at.max(1);
                    }
                }
                if t.vgpu == 0 && !t.reserved {
                    elapsed = 60_000;
                    core.set_has_work(0, false);
                    light_wakes_at = now + elapsed + 5_000_000;
                }
                if t.reserved {
                    idle += elapsed;
                } else {
                    *used.entry(t.vgpu).or_insert(0u64) += elapsed;
                }
                core.account(&t, elapsed);
                now += elapsed;
            }
            let sum_w: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let entitled = |id: usize| match policy {
                Policy::FixedShare => f64::from(weights[id]) / sum_w as f64,
                _ => 0.25,
            };
            for id in 1..4u32 {
                let want = entitled(id as usize);
                let got = share(&used, id, now);
                assert!((got - want).abs() < 0.01, "{policy} {id}: {got} vs {want}");
            }
            // The light vGPU's unused share is idled, not given away.
            let light = share(&used, 0, now);
            let want_idle = entitled(0) - light;
            assert!(
                (idle as f64 / now as f64 - want_idle).abs() < 0.01,
                "{policy}"
            );
            assert!(light > 0.005, "{policy}: light got {light}");
        }
    }
}
