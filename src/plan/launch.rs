//! What exactly gets executed for a model, and its launch identity.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::{CacheType, FlashAttn, GpuLayers, GpuLayersKeyword, LoadMode, ModelConfig};

/// A llama-server invocation, minus the `--host`/`--port` the supervisor
/// appends when it picks a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Only the variables the spec sets; the child inherits the daemon's
    /// environment beneath them.
    pub env: BTreeMap<String, String>,
    /// Where the child runs (the spec's directory); empty: the daemon's.
    #[serde(default)]
    pub working_dir: PathBuf,
}

/// Canonical hash of everything that shapes the llama-server process.
/// Equal identities mean an instance can be left running.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LaunchId(pub String);

impl fmt::Display for LaunchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Launch {
    /// The command line for `model`. Values equal to llama.cpp's own
    /// defaults are left out, so writing a default explicitly and leaving it
    /// implied give the same launch (and identity).
    pub fn for_model(model: &ModelConfig, program: &Path) -> Launch {
        let o = &model.launch;
        let mut args: Vec<String> = vec![
            "--model".into(),
            model.model.display().to_string(),
            "--alias".into(),
            model.name.clone(),
        ];
        let mut flag = |name: &str, value: String| {
            args.push(name.to_owned());
            args.push(value);
        };
        if let Some(n) = o.ctx_size.filter(|&n| n != 0) {
            flag("--ctx-size", n.to_string());
        }
        match o.gpu_layers {
            None | Some(GpuLayers::Keyword(GpuLayersKeyword::Auto)) => {}
            Some(GpuLayers::Keyword(GpuLayersKeyword::All)) => flag("--gpu-layers", "all".into()),
            Some(GpuLayers::Count(n)) => flag("--gpu-layers", n.to_string()),
        }
        if let Some(n) = o.parallel {
            flag("--parallel", n.to_string());
        }
        if let Some(fa) = o.flash_attn.filter(|&fa| fa != FlashAttn::Auto) {
            flag("--flash-attn", fa.to_string());
        }
        if let Some(t) = o.cache_type_k.filter(|&t| t != CacheType::F16) {
            flag("--cache-type-k", t.to_string());
        }
        if let Some(t) = o.cache_type_v.filter(|&t| t != CacheType::F16) {
            flag("--cache-type-v", t.to_string());
        }
        if let Some(n) = o.threads {
            flag("--threads", n.to_string());
        }
        if let Some(n) = o.batch_size.filter(|&n| n != 2048) {
            flag("--batch-size", n.to_string());
        }
        if let Some(n) = o.ubatch_size.filter(|&n| n != 512) {
            flag("--ubatch-size", n.to_string());
        }
        if let Some(m) = o.load_mode.filter(|&m| m != LoadMode::Auto) {
            flag("--load-mode", m.to_string());
        }
        if let Some(t) = &o.chat_template {
            flag("--chat-template", t.clone());
        }
        if let Some(p) = &o.chat_template_file {
            flag("--chat-template-file", p.display().to_string());
        }
        match o.jinja {
            Some(true) => args.push("--jinja".into()),
            Some(false) => args.push("--no-jinja".into()),
            None => {}
        }
        // What is planned is what runs: llama.cpp's `--fit` (on by default)
        // would shrink an unset context or layer count to the free memory
        // of the moment. Off, an unset context is the trained one and
        // `gpu_layers: auto` offloads every layer, which is what the memory
        // estimate assumes. A `--fit` in `extra_args` is the user's choice.
        let user_fit = o
            .extra_args
            .iter()
            .any(|a| a == "--fit" || a == "-fit" || a.starts_with("--fit="));
        if !user_fit {
            args.push("--fit".into());
            args.push("off".into());
        }
        // Verbosity 4 makes llama-server print its buffer sizes per device
        // at load, which is how status measures each instance on every
        // backend (some 180 lines at load, about 30 per request). A
        // verbosity in `extra_args` is the user's choice.
        let user_verbosity = o.extra_args.iter().any(|a| {
            matches!(
                a.split('=').next().unwrap_or(""),
                "-lv"
                    | "--verbosity"
                    | "--log-verbosity"
                    | "-v"
                    | "--verbose"
                    | "--log-verbose"
                    | "--log-disable"
            )
        });
        if !user_verbosity {
            args.push("-lv".into());
            args.push("4".into());
        }
        args.extend(o.extra_args.iter().cloned());
        Launch {
            program: program.to_owned(),
            args,
            env: o.env.clone(),
            working_dir: o.working_dir.clone(),
        }
    }

    pub fn identity(&self) -> LaunchId {
        // Length-prefixed fields, so no two different launches serialise alike.
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"rocm-llm launch v2");
        field(self.program.as_os_str().as_encoded_bytes());
        field(&(self.args.len() as u64).to_le_bytes());
        for a in &self.args {
            field(a.as_bytes());
        }
        field(&(self.env.len() as u64).to_le_bytes());
        for (k, v) in &self.env {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(self.working_dir.as_os_str().as_encoded_bytes());
        let digest = h.finalize();
        LaunchId(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }

    /// The command line as a person would paste it into a shell.
    pub fn shell_line(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
