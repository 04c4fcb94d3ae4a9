//! GGUF: reading model headers, and writing tiny test models.
//!
//! GGUF is llama.cpp's model file format: a little-endian header (magic
//! `GGUF`, version, tensor count, metadata key/values, tensor descriptions)
//! followed by the aligned tensor data. The daemon only ever needs the header
//! (architecture, layer/head counts, context length, total weight bytes) to
//! plan memory, so [`GgufHeader::read`] parses exactly that, from any
//! [`std::io::Read`], under a byte budget so that a hostile or corrupt file
//! cannot make it allocate without bound. It never touches tensor data.
//!
//! [`write_tiny_llama`] writes a real, loadable ~0.5 MB llama-architecture
//! model with seeded random weights and a byte-level SentencePiece vocab, for
//! tests, the `demo-model` command and the VM tests: llama-server loads it in a
//! fraction of a second and answers chat completions with printable ASCII.
//!
//! - [`read`]: the header parser ([`GgufHeader`]).
//! - [`write`]: a small general GGUF writer ([`GgufWriter`]).
//! - [`tiny`]: the tiny llama model ([`TinyModel`], [`write_tiny_llama`]).

pub mod check;
pub mod mmproj;
pub mod read;
pub mod shapes;
pub mod tiny;
pub mod write;

pub use check::{CheckError, CheckedModel, check_model, decimal_bytes};
pub use read::{DEFAULT_HEADER_LIMIT, GgufHeader, GgufTensorInfo, has_gguf_magic};
pub use tiny::{CHATML_TEMPLATE, TinyModel, tiny_llama_bytes, tiny_llama_writer, write_tiny_llama};
pub use write::GgufWriter;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// The GGUF version this crate writes. Versions 2 and 3 are read (they differ
/// only in that 3 allows big-endian files, which are rejected here).
pub const GGUF_VERSION: u32 = 3;

/// Tensor data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// What went wrong reading a GGUF header. Each message names the problem and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("could not read the GGUF file: {0}")]
    Io(#[from] std::io::Error),

    #[error(
        "not a GGUF file: it starts with {found:02x?} instead of \"GGUF\"; \
         point the model path at a .gguf file (not a safetensors/bin/pickle checkpoint \
         or a partial download)"
    )]
    NotGguf { found: Vec<u8> },

    #[error(
        "the file ends inside the GGUF header (while reading {what}); \
         the file is truncated, e.g. an interrupted download: download it again"
    )]
    Truncated { what: String },

    #[error(
        "GGUF version {0} is not supported (only versions 2 and 3 are); \
         version 1 files are obsolete: re-convert the model with a current llama.cpp"
    )]
    UnsupportedVersion(u32),

    #[error(
        "this GGUF file is big-endian (version field reads {0:#010x}); \
         only little-endian GGUF files are supported: use a little-endian build of the model"
    )]
    BigEndian(u32),

    #[error(
        "the GGUF header needs more than {limit} bytes (while reading {what}); \
         the file is corrupt or hostile, or the limit is too small for this model \
         (raise it if the file is trusted)"
    )]
    TooLarge { what: String, limit: u64 },

    #[error(
        "the header claims {count} {what}, more than the {rest} bytes left in the file can hold; \
         the file is truncated or corrupt: download it again"
    )]
    ImpossibleCount { what: String, count: u64, rest: u64 },

    #[error(
        "tensor {name:?} has shape {dims:?}, whose element count overflows a 64-bit integer; \
         the file is corrupt"
    )]
    DimensionOverflow { name: String, dims: Vec<u64> },

    #[error(
        "GGUF metadata key {key:?} has unknown value type {type_id}; the file is corrupt or from a newer GGUF revision"
    )]
    UnknownValueType { key: String, type_id: u32 },

    #[error("{what} is not valid UTF-8; the file is corrupt")]
    InvalidUtf8 { what: String },

    #[error("GGUF metadata key {0:?} appears twice; the file is corrupt")]
    DuplicateKey(String),

    #[error(
        "general.alignment is {0}, which is not a power of two (as a u32); the file is corrupt"
    )]
    BadAlignment(String),

    #[error("tensor {name:?} has {n_dims} dimensions; GGUF allows at most 4; the file is corrupt")]
    TooManyDims { name: String, n_dims: u32 },

    #[error(
        "tensor {name:?} has ggml type {type_id}, which this build of rocm-llm does not know; \
         the file may need a newer llama.cpp and rocm-llm, or it is corrupt"
    )]
    UnknownTensorType { name: String, type_id: u32 },

    #[error(
        "tensor {name:?} has shape {dims:?}: its rows of {row} elements are not a multiple \
         of its type's block size {block}, or its size overflows; the file is corrupt"
    )]
    BadTensorShape {
        name: String,
        dims: Vec<u64>,
        row: u64,
        block: u64,
    },
}

/// A metadata value type, as numbered in the GGUF format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    /// The type with this GGUF number, if any.
    pub fn from_u32(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array (arrays of arrays are allowed by the format).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufArray {
    /// The element type; every value in `values` has it.
    pub elem_type: GgufValueType,
    pub values: Vec<GgufValue>,
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(_) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// The value as a non-negative integer, whatever its integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, whatever its numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn string_array<I, S>(items: I) -> GgufValue
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::String,
            values: items
                .into_iter()
                .map(|s| GgufValue::String(s.into()))
                .collect(),
        })
    }

    /// An array of f32.
    pub fn f32_array(items: impl IntoIterator<Item = f32>) -> GgufValue {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::F32,
            values: items.into_iter().map(GgufValue::F32).collect(),
        })
    }

    /// An array of i32.
    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> GgufValue {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::I32,
            values: items.into_iter().map(GgufValue::I32).collect(),
        })
    }
}

impl From<&str> for GgufValue {
    fn from(s: &str) -> Self {
        GgufValue::String(s.to_owned())
    }
}
impl From<String> for GgufValue {
    fn from(s: String) -> Self {
        GgufValue::String(s)
    }
}
impl From<u32> for GgufValue {
    fn from(v: u32) -> Self {
        GgufValue::U32(v)
    }
}
impl From<u64> for GgufValue {
    fn from(v: u64) -> Self {
        GgufValue::U64(v)
    }
}
impl From<i32> for GgufValue {
    fn from(v: i32) -> Self {
        GgufValue::I32(v)
    }
}
impl From<f32> for GgufValue {
    fn from(v: f32) -> Self {
        GgufValue::F32(v)
    }
}
impl From<bool> for GgufValue {
    fn from(v: bool) -> Self {
        GgufValue::Bool(v)
    }
}

/// A ggml tensor element type, by its GGUF number. Kept as a number so that
/// headers with types newer than this crate still parse; [`GgmlType::layout`]
/// says whether the size of such a tensor can be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    /// `(name, elements per block, bytes per block)`, as in ggml's type traits
    /// (llama.cpp b11434); `None` for unknown or removed types.
    pub fn layout(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            42 => ("Q2_0", 64, 18),
            _ => return None,
        })
    }

    /// The ggml name (`"Q4_K"`), or `None` for an unknown type.
    pub fn name(self) -> Option<&'static str> {
        self.layout().map(|(n, _, _)| n)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type{}", self.0),
        }
    }
}
