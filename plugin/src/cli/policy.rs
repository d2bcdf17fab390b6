//! `kata-nri-manager policy eval` and `policy check` (docs/policies.md, "Command line").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::config::{Annotations, FailurePolicy, Policies, Registries};
use crate::policy::{
    AdmitOutcome, Chain, Decision, EngineOptions, Guard, LoadedPolicy, NodeFacts, PodInfo,
    PolicyEngine, Request, RuntimeOutcome, RuntimeOverrides, SourceOutcome, SourceSpec, Trigger,
    policy_files, policy_name,
};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run one policy on a request and print its decisions as JSON.
    Eval(EvalArgs),
    /// Load every policy of a directory (compile, link, validate settings) and report.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The policy component.
    #[arg(long, value_name = "FILE.wasm")]
    pub policy: PathBuf,
    /// The policy's settings, as JSON [default: {}].
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// The request (JSON; format in docs/policies.md).
    #[arg(long, value_name = "FILE.json")]
    pub request: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policies directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Operator config whose policies.settings/failurePolicy/limits to use; without it,
    /// settings are not validated.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Eval(args) => eval(&args),
        PolicyCommand::Check(args) => check(&args.dir, args.config.as_deref()),
    }
}

/// The request file of `policy eval`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EvalRequest {
    /// Which calls to make; all that apply when absent (`admit` only with a `pod`).
    #[serde(default)]
    calls: Option<Vec<Call>>,
    class_name: String,
    source: SourceSpec,
    #[serde(default)]
    trigger: Trigger,
    /// The node; this machine's facts when absent.
    #[serde(default)]
    node: Option<NodeFacts>,
    /// The operator's runtime settings, as the first policy sees them.
    #[serde(default)]
    runtime: RuntimeOverrides,
    #[serde(default)]
    pod: Option<PodInfo>,
    /// `registries.allowed` and `annotations.allowed` as the daemon would enforce them.
    #[serde(default)]
    registries: Registries,
    #[serde(default)]
    annotations: Annotations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Call {
    SelectSource,
    MutateRuntime,
    Admit,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EvalOutput {
    policy: String,
    digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    select_source: Option<Decision<SourceOutcome>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutate_runtime: Option<Decision<RuntimeOutcome>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admit: Option<Decision<AdmitOutcome>>,
}

fn eval(args: &EvalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.request)
        .with_context(|| format!("reading {}", args.request.display()))?;
    let request: EvalRequest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a policy request", args.request.display()))?;
    let settings: Option<serde_json::Value> = args
        .settings
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--settings is not JSON")?;
    let engine = PolicyEngine::new(EngineOptions::default())?;
    let name = policy_name(&args.policy);
    let policy = LoadedPolicy::load(
        &engine,
        &name,
        &args.policy,
        settings.as_ref(),
        FailurePolicy::Deny,
    )?;
    let digest = policy.digest().to_owned();
    let guard = Guard::new(request.registries.clone(), request.annotations.clone());
    let chain = Chain::new(vec![policy], guard);
    let output = evaluate(&chain, request, name, digest)?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

fn evaluate(
    chain: &Chain,
    request: EvalRequest,
    policy: String,
    digest: String,
) -> Result<EvalOutput> {
    let calls = request.calls.clone().unwrap_or_else(|| {
        let mut all = vec![Call::SelectSource, Call::MutateRuntime];
        if request.pod.is_some() {
            all.push(Call::Admit);
        }
        all
    });
    let node = request.node.clone().unwrap_or_else(NodeFacts::probe);
    let decided = Request {
        class_name: request.class_name.clone(),
        configured: request.source.clone(),
        trigger: request.trigger,
    };
    let mut output = EvalOutput {
        policy,
        digest,
        select_source: None,
        mutate_runtime: None,
        admit: None,
    };
    for call in calls {
        match call {
            Call::SelectSource => output.select_source = Some(chain.select_source(&decided, &node)),
            Call::MutateRuntime => {
                output.mutate_runtime =
                    Some(chain.mutate_runtime(&decided, &node, &request.runtime));
            }
            Call::Admit => {
                let Some(pod) = &request.pod else {
                    bail!("calls names admit but the request has no pod");
                };
                output.admit = Some(chain.admit(&decided, &node, pod));
            }
        }
    }
    Ok(output)
}

/// Loads every policy of `dir` as the daemon would and prints one line per policy; the error
/// lists every policy that failed.
fn check(dir: &Path, config: Option<&Path>) -> Result<()> {
    let (policies, settings_checked) = match config {
        Some(file) => {
            let loaded = crate::config::load(file, None)?;
            let mut policies = loaded.config.policies;
            policies.dir = dir.to_owned();
            (policies, true)
        }
        None => (
            Policies {
                dir: dir.to_owned(),
                ..Policies::default()
            },
            false,
        ),
    };
    let engine = PolicyEngine::new(EngineOptions {
        limits: policies.limits.clone(),
        cache_dir: None,
    })?;
    let mut failed = Vec::new();
    let mut names = BTreeMap::new();
    let files = policy_files(dir)?;
    if files.is_empty() {
        eprintln!("warning: {} has no *.wasm policies", dir.display());
    }
    for file in files {
        let name = policy_name(&file);
        if let Some(other) = names.insert(name.clone(), file.clone()) {
            failed.push(format!(
                "policy {name}: both {} and {} are named {name}; settings would apply to both",
                other.display(),
                file.display()
            ));
        }
        let result = if settings_checked {
            LoadedPolicy::load(
                &engine,
                &name,
                &file,
                policies.settings.get(&name),
                policies.failure_policy_of(&name),
            )
            .map(|p| p.digest().to_owned())
            .map_err(anyhow::Error::from)
        } else {
            load_without_settings(&engine, &name, &file)
        };
        match result {
            Ok(digest) => println!("{}: ok ({name}, {digest})", file.display()),
            Err(e) => {
                println!("{}: FAILED", file.display());
                failed.push(format!("{e:#}"));
            }
        }
    }
    for name in policies.settings.keys().filter(|n| !names.contains_key(*n)) {
        eprintln!(
            "warning: policies.settings.{name} names no policy in {}",
            dir.display()
        );
    }
    if !settings_checked {
        eprintln!("note: settings not validated (pass --config to validate policies.settings)");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

/// Compiles and links, skipping `validate-settings` (no operator settings to give it).
fn load_without_settings(engine: &PolicyEngine, name: &str, file: &Path) -> Result<String> {
    match LoadedPolicy::load(engine, name, file, None, FailurePolicy::Deny) {
        Ok(policy) => Ok(policy.digest().to_owned()),
        // `{}` is not every policy's valid settings: that is not this check's concern.
        Err(crate::policy::PolicyError::Settings { .. }) => Ok(digest_of(file)?),
        Err(e) => Err(e.into()),
    }
}

fn digest_of(file: &Path) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("sha256:{hex}"))
}
