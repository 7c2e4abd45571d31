//! The wasmtime engine and the sandbox every evaluation runs in: pooling allocator with
//! copy-on-write memory images, an epoch deadline driven by a ticker thread, a memory
//! cap and a stack cap. A module is compiled once ([`Policy`]); each evaluation gets a
//! fresh store and instance from its `InstancePre`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmkguard_model::outcome::PolicyRef;
use cmkguard_model::{Decision, PolicyInput};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker, TypedFunc};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap};

use crate::bindings::cmkguard::policy::log;
use crate::bindings::{Policy as BindingsV1, PolicyPre as PolicyPreV1};
use crate::bindings_v2::cmkguard::policy::log as log_v2;
use crate::bindings_v2::{Policy as BindingsV2, PolicyPre as PolicyPreV2};
use crate::cache::ArtifactCache;
use crate::error::{EvalError, LoadError};
use crate::validate::{DecisionLimits, validate, validate_resolved};

/// The contract version of new policies (`wit/v2`): what the SDK and the built-in
/// policies are built against.
pub const CONTRACT_VERSION: &str = "2.0.0";
/// Every contract major version this host loads: 2 (`wit/v2`) and 1 (`wit/policy.wit`,
/// policies built before 2 existed keep running unchanged).
pub const CONTRACT_VERSIONS: &str = "2.x or 1.x";
/// The interfaces a policy may import: the bounded log, and the contract's type-only
/// interface (no functions).
pub const ALLOWED_IMPORTS: [&str; 2] = ["cmkguard:policy/log", "cmkguard:policy/types"];
/// The interface a policy must export.
pub const EVALUATOR_EXPORT: &str = "cmkguard:policy/evaluator";

/// Per-evaluation limits and engine sizing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock deadline of one call into the policy.
    pub timeout: Duration,
    /// Largest linear memory of one instance.
    pub memory_bytes: usize,
    /// Largest wasm stack.
    pub stack_bytes: usize,
    /// Largest table.
    pub table_elements: usize,
    /// Concurrent instances the pool holds.
    pub instances: u32,
    /// Largest module accepted.
    pub module_bytes: usize,
    /// Bytes at the start of each pooled linear memory that are reset in place (memset /
    /// copy from the image) instead of being returned to the kernel: cheaper than the
    /// page faults that would follow, up to a point (BENCHMARKS.md, "Policy"). The
    /// default covers the whole initial memory of the policies built by `policy-wasm/`
    /// (64 KiB stack, data, heap: 256 KiB), so a typical evaluation resets without a
    /// system call.
    pub keep_resident_bytes: usize,
    /// Reset only the pages an evaluation dirtied within `keep_resident_bytes`, found with
    /// Linux's `PAGEMAP_SCAN` ioctl (kernel ≥ 6.7; elsewhere wasmtime falls back to
    /// resetting all of them). On by default: one ioctl is cheaper than a 256 KiB memset
    /// (BENCHMARKS.md, "Policy").
    pub pagemap_scan: bool,
    /// Fill each instance's function tables at instantiation instead of on first use
    /// (wasmtime's `table_lazy_init(false)`).
    pub eager_tables: bool,
    /// Write `/tmp/perf-<pid>.map` so that `perf report` names the policies' compiled
    /// functions (profiling only).
    pub perf_map: bool,
    pub decision: DecisionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            memory_bytes: 256 << 20,
            stack_bytes: 512 << 10,
            table_elements: 100_000,
            instances: 64,
            module_bytes: 64 << 20,
            keep_resident_bytes: 256 << 10,
            pagemap_scan: true,
            eager_tables: false,
            perf_map: false,
            decision: DecisionLimits::default(),
        }
    }
}

/// Lines of policy log kept per evaluation, and bytes per line.
const LOG_LINES: u32 = 32;
const LOG_LINE_BYTES: usize = 1024;

/// Store data of one evaluation.
pub(crate) struct Sandbox {
    memory_cap: usize,
    table_cap: usize,
    memory_hit: bool,
    logged: u32,
    policy: Arc<str>,
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_hit = true;
            return Err(wasmtime::format_err!("memory limit of {} MiB exceeded", self.memory_cap >> 20));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_cap)
    }
}

impl log::Host for Sandbox {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => log_v2::Level::Debug,
            log::Level::Info => log_v2::Level::Info,
            log::Level::Warn => log_v2::Level::Warn,
            log::Level::Error => log_v2::Level::Error,
        };
        log_v2::Host::log(self, level, message);
    }
}

impl log_v2::Host for Sandbox {
    fn log(&mut self, level: log_v2::Level, message: String) {
        self.logged = self.logged.saturating_add(1);
        if self.logged > LOG_LINES {
            if self.logged == LOG_LINES + 1 {
                tracing::warn!(policy = %self.policy, "policy log limit reached; further lines of this evaluation dropped");
            }
            return;
        }
        let mut end = message.len().min(LOG_LINE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let line = &message[..end];
        match level {
            log_v2::Level::Debug => tracing::debug!(policy = %self.policy, "{line}"),
            log_v2::Level::Info => tracing::info!(policy = %self.policy, "{line}"),
            log_v2::Level::Warn => tracing::warn!(policy = %self.policy, "{line}"),
            log_v2::Level::Error => tracing::error!(policy = %self.policy, "{line}"),
        }
    }
}

/// The shared engine: configuration, linker and the epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<Sandbox>,
    limits: Limits,
    deadline_ticks: u64,
    cache: Option<ArtifactCache>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("limits", &self.inner.limits).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Builds the engine; `cache_dir` holds precompiled artifacts (none: always compile).
    pub fn new(limits: Limits, cache_dir: Option<std::path::PathBuf>) -> Result<Self, LoadError> {
        let tick = (limits.timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(10));
        let deadline_ticks = limits.timeout.as_nanos().div_ceil(tick.as_nanos()) as u64 + 1;

        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 48)
            .total_memories(limits.instances * 2)
            .total_tables(limits.instances * 4)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .max_memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements)
            .max_component_instance_size(4 << 20)
            .linear_memory_keep_resident(limits.keep_resident_bytes)
            .table_keep_resident(16 << 10)
            .pagemap_scan(if limits.pagemap_scan { wasmtime::Enabled::Auto } else { wasmtime::Enabled::No });
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.stack_bytes)
            .memory_init_cow(true)
            .memory_reservation(limits.memory_bytes as u64)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .table_lazy_init(!limits.eager_tables)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if limits.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        log::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        log_v2::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        spawn_ticker(&engine, tick);
        let cache = match cache_dir {
            Some(dir) => Some(ArtifactCache::new(dir, &engine)?),
            None => None,
        };
        Ok(Self { inner: Arc::new(EngineInner { engine, linker, limits, deadline_ticks, cache }) })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Compiles (or loads from the cache), checks imports, exports and metadata, and
    /// validates `settings` with the policy. `origin` names the source in messages.
    pub fn load(&self, bytes: &[u8], origin: &str, settings: &str) -> Result<Policy, LoadError> {
        let limits = &self.inner.limits;
        if bytes.len() > limits.module_bytes {
            return Err(LoadError::TooLarge { size: bytes.len(), limit: limits.module_bytes });
        }
        check_header(bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let started = Instant::now();
        let (component, from_cache) = match &self.inner.cache {
            Some(cache) => cache.component(&self.inner.engine, bytes, &digest)?,
            None => {
                (Component::new(&self.inner.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?, false)
            }
        };
        let compile_time = started.elapsed();

        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.inner.engine).map(|(n, _)| n.to_owned()).collect();
        let exports: Vec<String> = ty.exports(&self.inner.engine).map(|(n, _)| n.to_owned()).collect();
        if let Some(bad) = imports.iter().find(|i| !ALLOWED_IMPORTS.iter().any(|a| is_version_of(i, a))) {
            return Err(LoadError::ForbiddenImport(bad.clone()));
        }
        // The newest contract the component exports wins (a component exporting both
        // is run as version 2).
        let exported = |major: &str| {
            exports.iter().any(|e| {
                is_version_of(e, EVALUATOR_EXPORT)
                    && version_of(e).and_then(|v| v.split('.').next()).is_some_and(|m| m == major)
            })
        };
        let major = match (exported("2"), exported("1")) {
            (true, _) => "2",
            (false, true) => "1",
            (false, false) => {
                return Err(LoadError::WrongContract {
                    found: if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") },
                    expected: CONTRACT_VERSIONS,
                });
            }
        };

        let pre =
            self.inner.linker.instantiate_pre(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let instantiate = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
        let pre = if major == "2" {
            let pre = PolicyPreV2::new(pre).map_err(instantiate)?;
            let evaluate = exports
                .iter()
                .filter(|e| is_version_of(e, EVALUATOR_EXPORT) && version_of(e).is_some_and(|v| v.starts_with("2.")))
                .find_map(|e| component.get_export_index(None, e))
                .and_then(|i| component.get_export_index(Some(&i), "evaluate"))
                .ok_or_else(|| LoadError::Instantiate("no evaluate function in the evaluator export".to_owned()))?;
            Pre::V2 { pre, evaluate }
        } else {
            Pre::V1(PolicyPreV1::new(pre).map_err(instantiate)?)
        };
        let mut policy = Policy {
            engine: self.clone(),
            pre,
            reference: PolicyRef { name: String::new(), version: String::new(), digest },
            log_name: Arc::from(origin),
            settings: settings.to_owned(),
            info: LoadInfo {
                origin: origin.to_owned(),
                size: bytes.len(),
                imports,
                exports,
                compile_time,
                from_cache,
                contract_version: String::new(),
            },
        };
        let meta = policy.metadata().map_err(|e| LoadError::Metadata(e.to_string()))?;
        if meta.contract_version.split('.').next() != Some(major) {
            return Err(LoadError::ContractVersion(meta.contract_version, CONTRACT_VERSIONS));
        }
        let bad_name = |s: &str| s.is_empty() || s.len() > 128 || s.chars().any(char::is_control);
        if bad_name(&meta.name) || bad_name(&meta.version) {
            return Err(LoadError::Metadata(format!(
                "name {:?} / version {:?} must be 1-128 printable characters",
                meta.name, meta.version
            )));
        }
        policy.log_name = Arc::from(meta.name.as_str());
        policy.reference.name = meta.name;
        policy.reference.version = meta.version;
        policy.info.contract_version = meta.contract_version;
        policy.check_settings(settings)?;
        Ok(policy)
    }
}

fn version_of(name: &str) -> Option<&str> {
    name.split_once('@').map(|(_, v)| v)
}

fn is_version_of(name: &str, interface: &str) -> bool {
    name.split_once('@').map_or(name, |(n, _)| n) == interface
}

/// Refuses what is obviously not a component, with a message that says what it is.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotAComponent("missing the \\0asm header (not a WebAssembly binary)".to_owned()));
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::NotAComponent(
            "a core WebAssembly module; wrap it into a component (see policy-wasm/README.md)".to_owned(),
        )),
        _ => Err(LoadError::NotAComponent("unknown WebAssembly version or layer".to_owned())),
    }
}

fn spawn_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("policy-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        }
    });
    if let Err(e) = spawned {
        // Without the ticker deadlines cannot fire; every evaluation would still be
        // bounded by the stack and memory caps, but not in time. Make it loud.
        tracing::error!(error = %e, "could not start the policy deadline thread");
    }
}

/// Facts about how a policy was loaded (for `policy check` and logs).
#[derive(Debug, Clone)]
pub struct LoadInfo {
    pub origin: String,
    pub size: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub compile_time: Duration,
    pub from_cache: bool,
    /// The contract version the policy reports (`1.0.0`, `2.0.0`).
    pub contract_version: String,
}

/// The contract-specific half of a loaded policy.
enum Pre {
    V1(PolicyPreV1<Sandbox>),
    /// `evaluate`: the export of the evaluate function, called without the bindings'
    /// per-instantiation type check of every export (see [`EvaluateV2`]).
    V2 {
        pre: PolicyPreV2<Sandbox>,
        evaluate: ComponentExportIndex,
    },
}

/// `metadata`'s answer, whichever the contract.
struct Metadata {
    name: String,
    version: String,
    contract_version: String,
}

/// A loaded, checked policy: compiled once, instantiated fresh per evaluation.
pub struct Policy {
    engine: PolicyEngine,
    pre: Pre,
    reference: PolicyRef,
    /// `reference.name` for the log lines of each evaluation's sandbox.
    log_name: Arc<str>,
    settings: String,
    info: LoadInfo,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("reference", &self.reference).field("info", &self.info).finish_non_exhaustive()
    }
}

impl Policy {
    /// Name, version and sha256 digest: carried by every decision.
    pub fn reference(&self) -> &PolicyRef {
        &self.reference
    }

    pub fn info(&self) -> &LoadInfo {
        &self.info
    }

    /// The settings this policy was loaded with (and validated).
    pub fn settings(&self) -> &str {
        &self.settings
    }

    /// Asks the policy whether it accepts `settings`.
    pub fn check_settings(&self, settings: &str) -> Result<(), LoadError> {
        let answer = match &self.pre {
            Pre::V1(pre) => self.call(pre, |b: &BindingsV1, store| {
                b.cmkguard_policy_evaluator().call_validate_settings(store, settings)
            }),
            Pre::V2 { pre, .. } => self.call(pre, |b: &BindingsV2, store| {
                b.cmkguard_policy_evaluator().call_validate_settings(store, settings)
            }),
        };
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(LoadError::Settings(msg)),
            Err(e) => Err(LoadError::Settings(format!("validate-settings failed: {e}"))),
        }
    }

    /// Evaluates with the settings the policy was loaded with.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Decision, EvalError> {
        self.evaluate_with(input, Some(&self.settings))
    }

    /// Evaluates; `settings` overrides the input's settings when given. The decision is
    /// validated against the input.
    pub fn evaluate_with(&self, input: &PolicyInput, settings: Option<&str>) -> Result<Decision, EvalError> {
        let limits = &self.engine.inner.limits.decision;
        let decision = match &self.pre {
            Pre::V1(pre) => {
                let tags = crate::convert::Tags::of(input);
                let registries = crate::convert::registries(input, &tags);
                let wit_input = crate::convert::input(input, &registries, settings)?;
                let raw = self
                    .call(pre, |b: &BindingsV1, store| b.cmkguard_policy_evaluator().call_evaluate(store, wit_input))?;
                crate::convert::decision(raw.map_err(|m| EvalError::Policy(truncate(m, 2048)))?)
            }
            Pre::V2 { pre, evaluate } => {
                let owned = crate::convert::v2::Input::new(input, settings)?;
                let wit_input = owned.wit();
                let evaluate = EvaluateV2 { pre, index: evaluate, input: std::marker::PhantomData };
                let raw = self.call(&evaluate, |f, store| f.call(store, (wit_input,)).map(|(r,)| r))?;
                let decision =
                    crate::convert::v2::decision(raw.map_err(|m| EvalError::Policy(truncate(m, 2048)))?, input)?;
                // Its resources were copied from the input (and checked) by the conversion.
                validate_resolved(&decision, input, limits).map_err(EvalError::InvalidDecision)?;
                return Ok(decision);
            }
        };
        validate(&decision, input, limits).map_err(EvalError::InvalidDecision)?;
        Ok(decision)
    }

    fn metadata(&self) -> Result<Metadata, EvalError> {
        Ok(match &self.pre {
            Pre::V1(pre) => {
                let m = self.call(pre, |b: &BindingsV1, store| b.cmkguard_policy_evaluator().call_metadata(store))?;
                Metadata { name: m.name, version: m.version, contract_version: m.contract_version }
            }
            Pre::V2 { pre, .. } => {
                let m = self.call(pre, |b: &BindingsV2, store| b.cmkguard_policy_evaluator().call_metadata(store))?;
                Metadata { name: m.name, version: m.version, contract_version: m.contract_version }
            }
        })
    }

    /// Runs `f` on a fresh instance in a fresh store, under the deadline and caps.
    fn call<P: Instantiate, R>(
        &self,
        pre: &P,
        f: impl FnOnce(&P::Bindings, &mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, EvalError> {
        let inner = &self.engine.inner;
        let sandbox = Sandbox {
            memory_cap: inner.limits.memory_bytes,
            table_cap: inner.limits.table_elements,
            memory_hit: false,
            logged: 0,
            policy: Arc::clone(&self.log_name),
        };
        let mut store = Store::new(&inner.engine, sandbox);
        store.limiter(|s| s);
        store.set_epoch_deadline(inner.deadline_ticks);
        pre.instantiate(&mut store)
            .map_err(|e| classify(e, &store, inner, true))
            .and_then(|bindings| f(&bindings, &mut store).map_err(|e| classify(e, &store, inner, false)))
    }
}

/// Instantiation, whichever the contract.
trait Instantiate {
    type Bindings;
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<Self::Bindings>;
}

impl Instantiate for PolicyPreV1<Sandbox> {
    type Bindings = BindingsV1;
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<BindingsV1> {
        PolicyPreV1::instantiate(self, store)
    }
}

impl Instantiate for PolicyPreV2<Sandbox> {
    type Bindings = BindingsV2;
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<BindingsV2> {
        PolicyPreV2::instantiate(self, store)
    }
}

/// Instantiates a contract-2 policy and returns its `evaluate` function. The bindings'
/// `instantiate` would also type-check all three exports against the contract's types on
/// every evaluation; `PolicyPreV2::new` did that once when the policy was loaded.
struct EvaluateV2<'p, 'i> {
    pre: &'p PolicyPreV2<Sandbox>,
    index: &'p ComponentExportIndex,
    input: std::marker::PhantomData<&'i ()>,
}

type EvaluateFn<'i> = TypedFunc<
    (crate::bindings_v2::cmkguard::policy::types::PolicyInput<'i>,),
    (Result<crate::bindings_v2::cmkguard::policy::types::Decision, String>,),
>;

impl<'i> Instantiate for EvaluateV2<'_, 'i> {
    type Bindings = EvaluateFn<'i>;
    fn instantiate(&self, store: &mut Store<Sandbox>) -> wasmtime::Result<EvaluateFn<'i>> {
        let instance = self.pre.instance_pre().instantiate(&mut *store)?;
        let func = instance
            .get_func(&mut *store, self.index)
            .ok_or_else(|| wasmtime::format_err!("the policy's evaluator has no evaluate function"))?;
        // SAFETY: `index` is the evaluate export of the component behind `pre`. Its
        // signature is `EvaluateFn`'s: `PolicyEngine::load` called `metadata` through the
        // bindings before this policy could be used, and the bindings' instantiation
        // type-checks all three exports, this one included, against the same generated
        // types (a mismatch refuses the policy). A component's types never change.
        #[allow(unsafe_code)]
        let typed = unsafe { EvaluateFn::new_unchecked(func) };
        Ok(typed)
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn classify(e: wasmtime::Error, store: &Store<Sandbox>, inner: &EngineInner, instantiating: bool) -> EvalError {
    if store.data().memory_hit {
        return EvalError::MemoryLimit(inner.limits.memory_bytes >> 20);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => EvalError::Timeout(inner.limits.timeout.as_millis() as u64),
        Some(Trap::StackOverflow) => EvalError::StackOverflow,
        Some(trap) => EvalError::Trap(format!("{trap}: {}", truncate(format!("{e:#}"), 1024))),
        None if instantiating => EvalError::Instantiate(truncate(format!("{e:#}"), 1024)),
        None => EvalError::Trap(truncate(format!("{e:#}"), 1024)),
    }
}
