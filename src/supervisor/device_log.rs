//! What llama-server's own log says it put where: the buffers it allocated per
//! device and how many layers it offloaded. Pure: lines in, figures out.
//!
//! llama.cpp prints these at its default verbosity while loading (b11434):
//! ```text
//! load_tensors: offloaded 4/7 layers to GPU
//! load_tensors:      Vulkan0 model buffer size =     1.20 MiB
//! load_tensors:   CPU_Mapped model buffer size =     0.55 MiB
//! llama_kv_cache:    Vulkan0 KV buffer size =     0.19 MiB
//! llama_context:  Vulkan_Host  output buffer size =     0.00 MiB
//! sched_reserve:    Vulkan0 compute buffer size =     1.52 MiB
//! ```
//! The name before the kind is the buffer's (its buffer type's) name: a
//! device (`Vulkan0`, `ROCm0`, `CUDA0`) or host memory (`CPU`, `CPU_Mapped`,
//! `CPU_REPACK`, `Vulkan_Host`, `ROCm_Host`). Lines may carry a prefix
//! (llama-server's timestamps or log level); only the part from the function
//! name on is read. Sizes are MiB with two decimals, so a figure is exact to
//! about 5 KiB.

/// What a buffer holds, as llama.cpp names it in the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufferKind {
    /// Weights (`model buffer`).
    Model,
    /// The KV cache (`KV buffer`).
    Kv,
    /// Recurrent state (`RS buffer`).
    RecurrentState,
    /// The compute graph's scratch (`compute buffer`).
    Compute,
    /// Logits and embeddings (`output buffer`).
    Output,
    /// LoRA adapters (`LoRA buffer`).
    Lora,
}

impl BufferKind {
    /// The word llama.cpp prints before " buffer size".
    pub fn as_str(self) -> &'static str {
        match self {
            BufferKind::Model => "model",
            BufferKind::Kv => "KV",
            BufferKind::RecurrentState => "RS",
            BufferKind::Compute => "compute",
            BufferKind::Output => "output",
            BufferKind::Lora => "LoRA",
        }
    }

    fn from_word(word: &str) -> Option<BufferKind> {
        [
            BufferKind::Model,
            BufferKind::Kv,
            BufferKind::RecurrentState,
            BufferKind::Compute,
            BufferKind::Output,
            BufferKind::Lora,
        ]
        .into_iter()
        .find(|k| k.as_str() == word)
    }
}

/// One "`<buffer>` `<kind>` buffer size = `<n>` MiB" line.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferLine {
    /// The buffer's name as printed: `Vulkan0`, `CPU_Mapped`, `ROCm_Host`.
    pub buffer: String,
    pub kind: BufferKind,
    pub mib: f64,
}

impl BufferLine {
    /// The device whose memory holds the buffer, or `None` for host memory
    /// (`CPU…` buffers and a GPU backend's pinned `…_Host` buffers).
    pub fn device(&self) -> Option<&str> {
        let host = self.buffer.starts_with("CPU") || self.buffer.ends_with("_Host");
        (!host).then_some(self.buffer.as_str())
    }

    /// The size in bytes (from the printed MiB, so to about 5 KiB).
    pub fn bytes(&self) -> u64 {
        // Sizes are non-negative and far below 2^53 bytes.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = (self.mib * 1024.0 * 1024.0).round() as u64;
        b
    }
}

/// The buffer a line reports, if it is a buffer-size line.
pub fn buffer_line(line: &str) -> Option<BufferLine> {
    let (before, after) = line.split_once(" buffer size =")?;
    let mib = after
        .trim()
        .strip_suffix("MiB")?
        .trim()
        .parse::<f64>()
        .ok()?;
    if !mib.is_finite() || mib < 0.0 {
        return None;
    }
    let mut words = before.split_whitespace().rev();
    let kind = BufferKind::from_word(words.next()?)?;
    // The DSV4 state line reads "<buf> DSV4 <name> state buffer size": not
    // a kind listed above, so it was rejected by from_word already.
    let buffer = words.next()?;
    if buffer.ends_with(':') {
        return None; // "func: model buffer size" without a buffer name
    }
    Some(BufferLine {
        buffer: buffer.to_owned(),
        kind,
        mib,
    })
}

/// `(offloaded, offloadable)` from "offloaded N/M layers to GPU".
pub fn offloaded_layers(line: &str) -> Option<(u32, u32)> {
    let rest = line.split_once("offloaded ")?.1;
    let (counts, tail) = rest.split_once(' ')?;
    if !tail.starts_with("layers to GPU") {
        return None;
    }
    let (n, m) = counts.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// Everything one load printed: the last "offloaded" line and every buffer line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceReport {
    pub offloaded: Option<(u32, u32)>,
    pub buffers: Vec<BufferLine>,
}

impl DeviceReport {
    /// Reads the lines of one llama-server run (pass only one run's lines:
    /// a restart prints everything again).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> DeviceReport {
        let mut report = DeviceReport::default();
        for line in lines {
            if let Some(b) = buffer_line(line) {
                report.buffers.push(b);
            } else if let Some(o) = offloaded_layers(line) {
                report.offloaded = Some(o);
            }
        }
        report
    }

    /// MiB on `device` (`None`: host memory), of `kind` or of every kind.
    pub fn mib(&self, device: Option<&str>, kind: Option<BufferKind>) -> f64 {
        self.buffers
            .iter()
            .filter(|b| b.device() == device && kind.is_none_or(|k| b.kind == k))
            .map(|b| b.mib)
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    }

    /// The devices that hold a buffer, in first-seen order (host excluded).
    pub fn devices(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for d in self.buffers.iter().filter_map(BufferLine::device) {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    /// (buffer, kind, MiB, device) a line should parse to.
    type Parsed = (&'static str, BufferKind, f64, Option<&'static str>);

    #[test]
    fn buffer_lines() {
        use BufferKind::*;
        let cases: &[(&str, Option<Parsed>)] = &[
            (
                "load_tensors:      Vulkan0 model buffer size =    68.85 MiB",
                Some(("Vulkan0", Model, 68.85, Some("Vulkan0"))),
            ),
            (
                "load_tensors:   CPU_Mapped model buffer size =    28.97 MiB",
                Some(("CPU_Mapped", Model, 28.97, None)),
            ),
            (
                "llama_kv_cache:    Vulkan0 KV buffer size =    28.50 MiB",
                Some(("Vulkan0", Kv, 28.5, Some("Vulkan0"))),
            ),
            (
                "llama_kv_cache:        CPU KV buffer size =    16.50 MiB",
                Some(("CPU", Kv, 16.5, None)),
            ),
            (
                "llama_context:  Vulkan_Host  output buffer size =     0.19 MiB",
                Some(("Vulkan_Host", Output, 0.19, None)),
            ),
            (
                "sched_reserve:      ROCm0 compute buffer size =    17.75 MiB",
                Some(("ROCm0", Compute, 17.75, Some("ROCm0"))),
            ),
            (
                "llama_memory_recurrent:       CUDA0 RS buffer size =     1.00 MiB",
                Some(("CUDA0", RecurrentState, 1.0, Some("CUDA0"))),
            ),
            (
                "0.01.123.456 I llama_kv_cache:    Vulkan0 KV buffer size =     0.19 MiB",
                Some(("Vulkan0", Kv, 0.19, Some("Vulkan0"))),
            ),
            (
                "llama_adapter_lora_init_impl:    Vulkan0 LoRA buffer size =     3.00 MiB",
                Some(("Vulkan0", Lora, 3.0, Some("Vulkan0"))),
            ),
            // not buffer lines, or malformed ones
            ("load_tensors: offloaded 20/31 layers to GPU", None),
            (
                "llama_kv_cache: Vulkan0 DSV4 foo state buffer size = 1.00 MiB",
                None,
            ),
            ("load_tensors: model buffer size = 1.00 MiB", None),
            ("load_tensors: Vulkan0 model buffer size = lots MiB", None),
            ("load_tensors: Vulkan0 model buffer size = 1.00 GiB", None),
            ("load_tensors: Vulkan0 model buffer size = -1.00 MiB", None),
            ("", None),
        ];
        for (line, want) in cases {
            let got = buffer_line(line);
            match want {
                None => assert_eq!(got, None, "{line:?}"),
                Some((buffer, kind, mib, device)) => {
                    let got = got.unwrap_or_else(|| panic!("{line:?} should parse"));
                    assert_eq!(got.buffer, *buffer, "{line:?}");
                    assert_eq!(got.kind, *kind, "{line:?}");
                    assert_eq!(got.mib, *mib, "{line:?}");
                    assert_eq!(got.device(), *device, "{line:?}");
                }
            }
        }
    }

    #[test]
    fn offloaded_lines() {
        let cases: &[(&str, Option<(u32, u32)>)] = &[
            (
                "load_tensors: offloaded 20/31 layers to GPU",
                Some((20, 31)),
            ),
            ("load_tensors: offloaded 0/3 layers to GPU", Some((0, 3))),
            (
                "0.00.100.000 I load_tensors: offloaded 7/7 layers to GPU",
                Some((7, 7)),
            ),
            ("load_tensors: offloading 20 repeating layers to GPU", None),
            ("load_tensors: offloaded x/3 layers to GPU", None),
            ("load_tensors: offloaded 3 layers to GPU", None),
        ];
        for (line, want) in cases {
            assert_eq!(offloaded_layers(line), *want, "{line:?}");
        }
    }

    #[test]
    fn a_load_sums_per_device_and_kind() {
        let log = "\
load_tensors: offloading 4 repeating layers to GPU
load_tensors: offloaded 4/7 layers to GPU
load_tensors:      Vulkan0 model buffer size =     1.25 MiB
load_tensors:   CPU_Mapped model buffer size =     0.50 MiB
llama_kv_cache:    Vulkan0 KV buffer size =     0.25 MiB
llama_kv_cache:        CPU KV buffer size =     0.25 MiB
llama_context:  Vulkan_Host  output buffer size =     0.01 MiB
sched_reserve:    Vulkan0 compute buffer size =     2.00 MiB
sched_reserve: Vulkan_Host compute buffer size =     0.75 MiB
srv  log_server_r: done request: GET /health 127.0.0.1 200";
        let r = DeviceReport::from_lines(log.lines());
        assert_eq!(r.offloaded, Some((4, 7)));
        assert_eq!(r.buffers.len(), 7);
        assert_eq!(r.devices(), ["Vulkan0"]);
        assert_eq!(r.mib(Some("Vulkan0"), None), 3.5);
        assert_eq!(r.mib(Some("Vulkan0"), Some(BufferKind::Model)), 1.25);
        assert_eq!(r.mib(None, Some(BufferKind::Kv)), 0.25);
        assert_eq!(r.mib(None, None), 0.5 + 0.25 + 0.01 + 0.75);
        assert_eq!(r.mib(Some("ROCm0"), None), 0.0);
        assert_eq!(r.buffers[0].bytes(), 1_310_720);
        assert_eq!(DeviceReport::from_lines([]), DeviceReport::default());
    }
}
