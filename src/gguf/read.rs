//! The GGUF header parser.
//!
//! Layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor
//! count, `u64` metadata count, the metadata (`string` key, `u32` value type,
//! value), the tensor infos (`string` name, `u32` n_dims, `u64` dims, `u32`
//! ggml type, `u64` offset into the data section), padding to the alignment,
//! then the tensor data, which this module never reads. A `string` is a `u64`
//! byte length and UTF-8 bytes; an array is a `u32` element type, a `u64`
//! length and the elements.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::{
    GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufArray, GgufError, GgufValue, GgufValueType,
};

/// The default budget for [`GgufHeader::read`]: bytes read plus the memory
/// the parsed header takes. Real headers are dominated by the tokenizer
/// arrays (a 256k-token vocab with merges parses to some 30 MB), so this is
/// ample for real models while bounding what a hostile file can cost.
pub const DEFAULT_HEADER_LIMIT: u64 = 128 << 20;

/// Arrays nest at most this deep (real files never nest at all); bounds the
/// parser's recursion.
const MAX_ARRAY_DEPTH: u32 = 8;

/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// Memory charged per parsed value, on top of its bytes in the file.
const VALUE_COST: u64 = std::mem::size_of::<GgufValue>() as u64;

/// A parsed GGUF header: everything before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// The GGUF version, 2 or 3.
    pub version: u32,
    /// The metadata, in file order (keys are unique).
    pub metadata: Vec<(String, GgufValue)>,
    /// The tensor descriptions, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// The data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Where the tensor data starts, from the start of the file: the header
    /// length, padded to the alignment. `file length - data_offset` is the
    /// size of the data section.
    pub data_offset: u64,
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// The shape in ggml order: `dims[0]` is the row length (contiguous).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// The offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The number of elements, `None` on overflow.
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// The size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> Result<u64, GgufError> {
        let (_, block, block_bytes) =
            self.ggml_type
                .layout()
                .ok_or_else(|| GgufError::UnknownTensorType {
                    name: self.name.clone(),
                    type_id: self.ggml_type.0,
                })?;
        let row = self.dims.first().copied().unwrap_or(1);
        let bad = || GgufError::BadTensorShape {
            name: self.name.clone(),
            dims: self.dims.clone(),
            row,
            block,
        };
        if row % block != 0 {
            return Err(bad());
        }
        self.n_elements()
            .map(|n| n / block)
            .and_then(|blocks| blocks.checked_mul(block_bytes))
            .ok_or_else(bad)
    }
}

/// Whether the file at `path` starts with the GGUF magic. `Ok(false)` for a
/// shorter or different file; `Err` only if it cannot be opened or read.
pub fn has_gguf_magic(path: impl AsRef<Path>) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf == GGUF_MAGIC)
}

impl GgufHeader {
    /// Parses a GGUF header from `r`, which must be at the start of the file.
    /// Reads exactly up to the end of the tensor infos (not the padding or the
    /// data). `limit` bounds the bytes read plus the memory the result takes;
    /// exceeding it is [`GgufError::TooLarge`]. [`DEFAULT_HEADER_LIMIT`] suits
    /// real models.
    pub fn read<R: Read>(r: R, limit: u64) -> Result<GgufHeader, GgufError> {
        GgufHeader::read_sized(r, limit, None)
    }

    /// Like [`read`](Self::read), knowing the file's length: then a count or
    /// length that the rest of the file cannot hold is rejected at once
    /// ([`GgufError::ImpossibleCount`]), before any budget is spent on it.
    pub fn read_sized<R: Read>(
        r: R,
        limit: u64,
        file_len: Option<u64>,
    ) -> Result<GgufHeader, GgufError> {
        Parser {
            r,
            pos: 0,
            left: limit,
            limit,
            file_len,
        }
        .header()
    }

    /// Opens `path` and parses its header with [`DEFAULT_HEADER_LIMIT`].
    pub fn read_path(path: impl AsRef<Path>) -> Result<GgufHeader, GgufError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        GgufHeader::read_sized(BufReader::new(file), DEFAULT_HEADER_LIMIT, Some(len))
    }

    /// The number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// A non-negative integer metadata value, whatever its integer type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    /// `general.architecture`, e.g. `"llama"`, `"qwen2"`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// `general.name`, the model's display name, if recorded.
    pub fn name(&self) -> Option<&str> {
        self.get_str("general.name")
    }

    /// `tokenizer.chat_template`, the model's Jinja chat template, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.get_str("tokenizer.chat_template")
    }

    /// The value of `<arch>.<suffix>`.
    pub fn arch_value(&self, suffix: &str) -> Option<&GgufValue> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{suffix}"))
    }

    /// `<arch>.<suffix>` as an integer; for a per-layer array, its maximum.
    fn arch_u64(&self, suffix: &str) -> Option<u64> {
        match self.arch_value(suffix)? {
            GgufValue::Array(a) => a.values.iter().filter_map(GgufValue::as_u64).max(),
            v => v.as_u64(),
        }
    }

    /// The sum over layers of `<arch>.<suffix>`: a scalar times `n_layer`,
    /// or the sum of the per-layer array; `None` on overflow. Never builds a
    /// per-layer list: `n_layer` is whatever the file claims.
    fn arch_layer_sum(&self, suffix: &str, n_layer: u64) -> Option<u64> {
        match self.arch_value(suffix)? {
            GgufValue::Array(a) => a
                .values
                .iter()
                .try_fold(0u64, |acc, v| acc.checked_add(v.as_u64()?)),
            v => v.as_u64()?.checked_mul(n_layer),
        }
    }

    /// `<arch>.block_count`: the number of layers.
    pub fn block_count(&self) -> Option<u64> {
        self.arch_u64("block_count")
    }

    /// `<arch>.context_length`: the training context length.
    pub fn context_length(&self) -> Option<u64> {
        self.arch_u64("context_length")
    }

    /// `<arch>.embedding_length`: the hidden size.
    pub fn embedding_length(&self) -> Option<u64> {
        self.arch_u64("embedding_length")
    }

    /// `<arch>.feed_forward_length` (the maximum, if per layer).
    pub fn feed_forward_length(&self) -> Option<u64> {
        self.arch_u64("feed_forward_length")
    }

    /// `<arch>.attention.head_count` (the maximum, if per layer).
    pub fn head_count(&self) -> Option<u64> {
        self.arch_u64("attention.head_count")
    }

    /// `<arch>.attention.head_count_kv` (the maximum, if per layer); like
    /// llama.cpp, falls back to [`head_count`](Self::head_count) when absent.
    pub fn head_count_kv(&self) -> Option<u64> {
        self.arch_u64("attention.head_count_kv")
            .or_else(|| self.head_count())
    }

    /// The sum of all tensors' data sizes: the model's weight bytes.
    pub fn total_tensor_bytes(&self) -> Result<u64, GgufError> {
        self.tensors.iter().try_fold(0u64, |acc, t| {
            let n = t.n_bytes()?;
            acc.checked_add(n).ok_or_else(|| GgufError::BadTensorShape {
                name: t.name.clone(),
                dims: t.dims.clone(),
                row: t.dims.first().copied().unwrap_or(1),
                block: 1,
            })
        })
    }

    /// An estimate of the KV cache bytes one token of context costs, for
    /// standard (grouped-query) attention with K and V elements of
    /// `bytes_per_element` bytes (2 for the default f16 cache): the sum over
    /// layers of `head_count_kv * (key_length + value_length)`. Head sizes
    /// default to `embedding_length / head_count`. `None` when the metadata
    /// lacks what is needed. Not exact for sliding-window, MLA or recurrent
    /// architectures.
    pub fn kv_cache_bytes_per_token(&self, bytes_per_element: u64) -> Option<u64> {
        let n_layer = self.block_count()?;
        let default_head = match (self.embedding_length(), self.head_count()) {
            (Some(e), Some(h)) if h > 0 => Some(e / h),
            _ => None,
        };
        let k_len = self.arch_u64("attention.key_length").or(default_head)?;
        let v_len = self.arch_u64("attention.value_length").or(default_head)?;
        let kv_heads = self
            .arch_layer_sum("attention.head_count_kv", n_layer)
            .or_else(|| self.arch_layer_sum("attention.head_count", n_layer))?;
        kv_heads
            .checked_mul(k_len.checked_add(v_len)?)?
            .checked_mul(bytes_per_element)
    }
}

struct Parser<R> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
    /// Budget left.
    left: u64,
    limit: u64,
    /// The file's length, when known.
    file_len: Option<u64>,
}

impl<R: Read> Parser<R> {
    fn charge(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(GgufError::TooLarge {
                what: what(),
                limit: self.limit,
            }),
        }
    }

    /// `count` items of at least `min_bytes` each must fit in what is left
    /// of the file.
    fn plausible(
        &self,
        count: u64,
        min_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        let Some(len) = self.file_len else {
            return Ok(());
        };
        let rest = len.saturating_sub(self.pos);
        if count.saturating_mul(min_bytes) > rest {
            return Err(GgufError::ImpossibleCount {
                what: what(),
                count,
                rest,
            });
        }
        Ok(())
    }

    fn bytes(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), GgufError> {
        self.charge(buf.len() as u64, what)?;
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                GgufError::Truncated { what: what() }
            } else {
                GgufError::Io(e)
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        self.bytes(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        self.plausible(len, 1, &|| format!("bytes in {}", what()))?;
        // Charge before allocating, so `len` is bounded by the budget.
        self.charge(len, what)?;
        self.left += len; // `bytes` charges the read itself
        let len = usize::try_from(len).map_err(|_| GgufError::TooLarge {
            what: what(),
            limit: self.limit,
        })?;
        let mut buf = vec![0u8; len];
        self.bytes(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    fn header(mut self) -> Result<GgufHeader, GgufError> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if magic[..got] != GGUF_MAGIC[..got] || got < 4 {
            if got < 4 && magic[..got] == GGUF_MAGIC[..got] && got > 0 {
                return Err(GgufError::Truncated {
                    what: "the magic".into(),
                });
            }
            return Err(GgufError::NotGguf {
                found: magic[..got].to_vec(),
            });
        }
        self.pos = 4;
        self.charge(4, &|| "the magic".into())?;

        let version = self.u32(&|| "the version".into())?;
        if version & 0xFFFF == 0 && version != 0 {
            return Err(GgufError::BigEndian(version));
        }
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = self.u64(&|| "the tensor count".into())?;
        let n_kv = self.u64(&|| "the metadata count".into())?;
        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a
        // tensor description 8 (name length) + 4 + 4 (type) + 8 (offset).
        self.plausible(n_kv, 13, &|| "metadata entries".into())?;
        self.plausible(n_tensors, 24, &|| "tensors".into())?;

        let mut metadata: Vec<(String, GgufValue)> =
            Vec::with_capacity(self.capacity(n_kv, VALUE_COST + 24));
        for i in 0..n_kv {
            let key = self.string(&|| format!("the key of metadata entry {i}"))?;
            let type_id = self.u32(&|| format!("the type of metadata key {key:?}"))?;
            let ty =
                GgufValueType::from_u32(type_id).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.clone(),
                    type_id,
                })?;
            let value = self.value(ty, &key, 0)?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(GgufError::DuplicateKey(key));
            }
            self.charge(24, &|| format!("metadata key {key:?}"))?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => return Err(GgufError::BadAlignment(format!("{v:?}"))),
        };

        let mut tensors = Vec::with_capacity(self.capacity(n_tensors, 96));
        for i in 0..n_tensors {
            let name = self.string(&|| format!("the name of tensor {i}"))?;
            let what = || format!("the description of tensor {name:?}");
            let n_dims = self.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64(&what)?);
            }
            // ggml counts elements in int64_t.
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(GgufError::DimensionOverflow { name, dims });
            }
            let ggml_type = GgmlType(self.u32(&what)?);
            let offset = self.u64(&what)?;
            self.charge(96, &what)?;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let data_offset = self.pos.div_ceil(alignment).saturating_mul(alignment);
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// A safe initial capacity for `n` items costing `cost` each: within the
    /// budget and modest (a large limit must not mean a large allocation up
    /// front for a count the file has not yet backed with bytes).
    fn capacity(&self, n: u64, cost: u64) -> usize {
        usize::try_from(n.min(self.left / cost.max(1)).min(1 << 16)).unwrap_or(0)
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: u32) -> Result<GgufValue, GgufError> {
        let what = || format!("the value of metadata key {key:?}");
        self.charge(VALUE_COST, &what)?;
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            GgufValueType::Bool => {
                let [b] = self.array(&what)?;
                GgufValue::Bool(b != 0)
            }
            GgufValueType::String => GgufValue::String(self.string(&what)?),
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooLarge {
                        what: format!("{} (arrays nested over {MAX_ARRAY_DEPTH} deep)", what()),
                        limit: self.limit,
                    });
                }
                let type_id = self.u32(&what)?;
                let elem_type = GgufValueType::from_u32(type_id).ok_or_else(|| {
                    GgufError::UnknownValueType {
                        key: key.to_owned(),
                        type_id,
                    }
                })?;
                let n = self.u64(&what)?;
                let min = match elem_type {
                    GgufValueType::U8 | GgufValueType::I8 | GgufValueType::Bool => 1,
                    GgufValueType::U16 | GgufValueType::I16 => 2,
                    GgufValueType::U32 | GgufValueType::I32 | GgufValueType::F32 => 4,
                    // A string or an array is at least its 8-byte length.
                    _ => 8,
                };
                self.plausible(n, min, &|| format!("elements in {}", what()))?;
                let mut values = Vec::with_capacity(self.capacity(n, VALUE_COST + 1));
                for _ in 0..n {
                    values.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(GgufArray { elem_type, values })
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    fn header_bytes(w: &GgufWriter) -> Vec<u8> {
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        out
    }

    fn sample() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama");
        w.add_kv("general.name", "sample");
        w.add_kv("llama.block_count", 3u32);
        w.add_kv("llama.context_length", 4096u64);
        w.add_kv("llama.embedding_length", 128u32);
        w.add_kv("llama.attention.head_count", 8u32);
        w.add_kv("llama.attention.head_count_kv", 2u32);
        w.add_kv("some.i8", GgufValue::I8(-3));
        w.add_kv("some.u8", GgufValue::U8(200));
        w.add_kv("some.u16", GgufValue::U16(65000));
        w.add_kv("some.i16", GgufValue::I16(-32000));
        w.add_kv("some.i64", GgufValue::I64(-1 << 40));
        w.add_kv("some.f64", GgufValue::F64(2.5));
        w.add_kv("some.f32", 0.25f32);
        w.add_kv("some.bool", true);
        w.add_kv("some.strings", GgufValue::string_array(["a", "", "ünï"]));
        w.add_kv(
            "some.nested",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::Array,
                values: vec![GgufValue::i32_array([1, 2]), GgufValue::i32_array([])],
            }),
        );
        w.add_tensor_f32("a", &[4, 2], &[0.5; 8]);
        w.add_tensor_f32("b", &[3], &[1.0, 2.0, 3.0]);
        w
    }

    #[test]
    fn round_trips_every_value_type() {
        let w = sample();
        let bytes = header_bytes(&w);
        let h = GgufHeader::read(&bytes[..], DEFAULT_HEADER_LIMIT).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.metadata, w.metadata());
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.name(), Some("sample"));
        assert_eq!(h.block_count(), Some(3));
        assert_eq!(h.context_length(), Some(4096));
        assert_eq!(h.embedding_length(), Some(128));
        assert_eq!(h.head_count(), Some(8));
        assert_eq!(h.head_count_kv(), Some(2));
        // 3 layers * 2 kv heads * (16 + 16) * 2 bytes
        assert_eq!(h.kv_cache_bytes_per_token(2), Some(3 * 2 * 32 * 2));
        assert_eq!(h.tensor_count(), 2);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.tensors[0].dims, vec![4, 2]);
        assert_eq!(h.tensors[0].ggml_type, GgmlType::F32);
        assert_eq!(h.tensors[0].offset, 0);
        assert_eq!(h.tensors[1].offset, 32);
        assert_eq!(h.total_tensor_bytes().unwrap(), 32 + 12);
        assert_eq!(h.data_offset % 32, 0);
        // Every tensor's data is padded to the alignment, the last one too.
        assert_eq!(bytes.len() as u64, h.data_offset + 32 + 32);
    }

    #[test]
    fn head_count_kv_defaults_to_head_count_and_arrays_take_max() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "x");
        w.add_kv("x.block_count", 2u32);
        w.add_kv("x.embedding_length", 64u32);
        w.add_kv("x.attention.head_count", GgufValue::i32_array([4, 8]));
        let h = GgufHeader::read(&header_bytes(&w)[..], 1 << 20).unwrap();
        assert_eq!(h.head_count(), Some(8));
        assert_eq!(h.head_count_kv(), Some(8));
        // head size 64/8 = 8: (4 + 8) heads * (8 + 8) * 1 byte
        assert_eq!(h.kv_cache_bytes_per_token(1), Some(12 * 16));
        assert_eq!(h.context_length(), None);
    }

    #[test]
    fn rejects_non_gguf_and_short_files() {
        let err = GgufHeader::read(&b"PK\x03\x04rest"[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::NotGguf { .. }), "{err}");
        assert!(err.to_string().contains("not a GGUF file"));
        let err = GgufHeader::read(&b""[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::NotGguf { .. }), "{err}");
        let err = GgufHeader::read(&b"GG"[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_versions() {
        let mut b = b"GGUF".to_vec();
        b.extend(1u32.to_le_bytes());
        let err = GgufHeader::read(&b[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion(1)), "{err}");
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_be_bytes());
        let err = GgufHeader::read(&b[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::BigEndian(_)), "{err}");
    }

    #[test]
    fn reads_version_2() {
        let mut bytes = header_bytes(&sample());
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        let h = GgufHeader::read(&bytes[..], 1 << 20).unwrap();
        assert_eq!(h.version, 2);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = header_bytes(&sample());
        let full = GgufHeader::read(&bytes[..], 1 << 20).unwrap();
        let header_len = usize::try_from(full.data_offset).unwrap();
        for cut in 0..header_len {
            match GgufHeader::read(&bytes[..cut], 1 << 20) {
                // Cutting only the padding after the tensor infos still parses.
                Ok(h) => assert_eq!(h, full, "cut at {cut}"),
                Err(e) => assert!(
                    matches!(e, GgufError::Truncated { .. } | GgufError::NotGguf { .. }),
                    "cut at {cut}: {e}"
                ),
            }
        }
    }

    #[test]
    fn hostile_lengths_hit_the_budget_without_allocating() {
        // A string key claiming u64::MAX bytes.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        let err = GgufHeader::read(&b[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::TooLarge { .. }), "{err}");

        // An array claiming 2^60 elements, and huge counts.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b'k');
        b.extend(9u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((1u64 << 60).to_le_bytes());
        b.extend(std::iter::repeat_n(0u8, 1 << 16));
        let err = GgufHeader::read(&b[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("\"k\""), "{err}");

        // The same file is fine under a large limit only up to its real end.
        let err = GgufHeader::read(&b[..], 1 << 40).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    }

    #[test]
    fn rejects_deep_nesting_duplicates_and_bad_alignment() {
        let mut v = GgufValue::i32_array([1]);
        for _ in 0..MAX_ARRAY_DEPTH {
            v = GgufValue::Array(GgufArray {
                elem_type: GgufValueType::Array,
                values: vec![v],
            });
        }
        let mut w = GgufWriter::new();
        w.add_kv("deep", v);
        let err = GgufHeader::read(&header_bytes(&w)[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::TooLarge { .. }), "{err}");

        // The writer refuses both, so patch its output.
        let patch = |bytes: &mut Vec<u8>, from: &[u8], to: &[u8]| {
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            bytes[at..at + from.len()].copy_from_slice(to);
        };
        let mut w = GgufWriter::new();
        w.add_kv("ka", 1u32);
        w.add_kv("kb", 2u32);
        let mut bytes = header_bytes(&w);
        patch(&mut bytes, b"kb", b"ka");
        let err = GgufHeader::read(&bytes[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::DuplicateKey(_)), "{err}");

        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", 1u32 << 20);
        let mut bytes = header_bytes(&w);
        patch(
            &mut bytes,
            &(1u32 << 20).to_le_bytes(),
            &24u32.to_le_bytes(),
        );
        let err = GgufHeader::read(&bytes[..], 1 << 20).unwrap_err();
        assert!(matches!(err, GgufError::BadAlignment(_)), "{err}");
    }

    #[test]
    fn tensor_sizes_follow_ggml_blocks() {
        let t = |dims: &[u64], ty: u32| GgufTensorInfo {
            name: "t".into(),
            dims: dims.to_vec(),
            ggml_type: GgmlType(ty),
            offset: 0,
        };
        assert_eq!(t(&[4096, 4096], 12).n_bytes().unwrap(), 4096 * 16 * 144);
        assert_eq!(t(&[64, 3], 8).n_bytes().unwrap(), 2 * 34 * 3);
        assert_eq!(t(&[10], 1).n_bytes().unwrap(), 20);
        assert!(matches!(
            t(&[100], 12).n_bytes(),
            Err(GgufError::BadTensorShape { .. })
        ));
        assert!(matches!(
            t(&[u64::MAX, 4], 0).n_bytes(),
            Err(GgufError::BadTensorShape { .. })
        ));
        assert!(matches!(
            t(&[32], 4).n_bytes(),
            Err(GgufError::UnknownTensorType { type_id: 4, .. })
        ));
    }

    #[test]
    fn magic_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, header_bytes(&sample())).unwrap();
        assert!(has_gguf_magic(&p).unwrap());
        std::fs::write(&p, b"GGU").unwrap();
        assert!(!has_gguf_magic(&p).unwrap());
        std::fs::write(&p, b"{\"not\": 1}").unwrap();
        assert!(!has_gguf_magic(&p).unwrap());
        assert!(has_gguf_magic(dir.path().join("missing")).is_err());
        assert!(matches!(
            GgufHeader::read_path(dir.path().join("missing")),
            Err(GgufError::Io(_))
        ));
    }
}
