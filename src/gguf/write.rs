//! A small GGUF writer: metadata and whole tensors held in memory, written
//! as GGUF version 3 (little-endian), the way ggml's own writer lays it out.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GgmlType, GgufValue};
use crate::gguf::read::GgufTensorInfo;

/// Builds a GGUF file in memory. Keys must be unique and arrays homogeneous;
/// [`write_to`](Self::write_to) checks both, and that every tensor's data
/// matches its shape and type.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(GgufTensorInfo, TensorData)>,
}

/// A tensor's bytes, or only its length for an all-zero tensor (written as
/// a hole by [`GgufWriter::write_sparse_file`], so a multi-gigabyte test
/// model costs neither memory nor disk).
#[derive(Debug, Clone)]
enum TensorData {
    Bytes(Vec<u8>),
    Zeros(u64),
}

impl TensorData {
    fn len(&self) -> u64 {
        match self {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::Zeros(n) => *n,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata key/value, in order.
    pub fn add_kv(&mut self, key: impl Into<String>, value: impl Into<GgufValue>) -> &mut Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Adds an F32 tensor; `dims` in ggml order (`dims[0]` is the row length).
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        data: &[f32],
    ) -> &mut Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor_raw(name, dims, GgmlType::F32, bytes)
    }

    /// Adds a tensor of any type from its raw little-endian bytes.
    pub fn add_tensor_raw(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        let info = GgufTensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            offset: 0,
        };
        self.tensors.push((info, TensorData::Bytes(data)));
        self
    }

    /// Adds an all-zero tensor of any type (its size follows from the shape;
    /// a shape the type cannot hold is refused at write time).
    pub fn add_tensor_zeros(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> &mut Self {
        let info = GgufTensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            offset: 0,
        };
        let n = info.n_bytes().unwrap_or(u64::MAX);
        self.tensors.push((info, TensorData::Zeros(n)));
        self
    }

    /// The sum of the tensors' data sizes.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|(_, d)| d.len()).sum()
    }

    fn alignment(&self) -> io::Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(GGUF_DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some((_, v)) => Err(invalid(format!(
                "general.alignment must be a u32 power of two, not {v:?}"
            ))),
        }
    }

    /// Writes the whole file.
    pub fn write_to<W: Write>(&self, w: W) -> io::Result<()> {
        self.write_header(w, false)
    }

    /// Writes the header (padded to the alignment), and unless
    /// `header_only` the tensor data after it.
    fn write_header<W: Write>(&self, w: W, header_only: bool) -> io::Result<()> {
        let alignment = self.alignment()?;
        for (i, (k, _)) in self.metadata.iter().enumerate() {
            if self.metadata[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(invalid(format!("metadata key {k:?} added twice")));
            }
        }
        let mut w = Counting { w, n: 0 };
        w.write_all(&GGUF_MAGIC)?;
        w.write_all(&GGUF_VERSION.to_le_bytes())?;
        w.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_string(&mut w, key)?;
            w.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(&mut w, key, value)?;
        }

        let mut offset = 0u64;
        for (info, data) in &self.tensors {
            let want = info
                .n_bytes()
                .map_err(|e| invalid(format!("tensor {:?}: {e}", info.name)))?;
            if want != data.len() {
                return Err(invalid(format!(
                    "tensor {:?} with shape {:?} and type {} needs {want} bytes, got {}",
                    info.name,
                    info.dims,
                    info.ggml_type,
                    data.len()
                )));
            }
            write_string(&mut w, &info.name)?;
            w.write_all(&(info.dims.len() as u32).to_le_bytes())?;
            for d in &info.dims {
                w.write_all(&d.to_le_bytes())?;
            }
            w.write_all(&info.ggml_type.0.to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += data.len().div_ceil(alignment) * alignment;
        }

        pad(&mut w, alignment)?;
        if header_only {
            return w.flush();
        }
        for (_, data) in &self.tensors {
            match data {
                TensorData::Bytes(b) => w.write_all(b)?,
                TensorData::Zeros(n) => {
                    io::copy(&mut io::Read::take(io::repeat(0), *n), &mut w)?;
                }
            }
            pad(&mut w, alignment)?;
        }
        w.flush()
    }

    /// Writes `path` with the all-zero tensors left as holes in a sparse
    /// file: the header and the other tensors are written, the rest is a
    /// seek and the final length.
    pub fn write_sparse_file(&self, path: &Path) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let alignment = self.alignment()?;
        let mut header = Vec::new();
        self.write_header(&mut header, true)?;
        let mut f = BufWriter::new(File::create(path)?);
        f.write_all(&header)?;
        let mut at = header.len() as u64;
        for (_, data) in &self.tensors {
            if let TensorData::Bytes(b) = data {
                f.seek(SeekFrom::Start(at))?;
                f.write_all(b)?;
            }
            at += data.len().div_ceil(alignment) * alignment;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.set_len(at)?;
        f.sync_all()
    }

    /// Writes the file to `path` atomically (a temporary file beside it, then
    /// a rename), so readers never see a partial model.
    pub fn write_file(&self, path: &Path) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = path
            .file_name()
            .ok_or_else(|| invalid(format!("{} is not a file path", path.display())))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        let result = File::create(&tmp).and_then(|f| {
            let mut bw = BufWriter::new(f);
            self.write_to(&mut bw)?;
            bw.into_inner().map_err(|e| e.into_error())?.sync_all()
        });
        match result.and_then(|()| fs::rename(&tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

struct Counting<W> {
    w: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

fn pad<W: Write>(w: &mut Counting<W>, alignment: u64) -> io::Result<()> {
    let n = w.n.div_ceil(alignment) * alignment - w.n;
    io::copy(&mut io::Read::take(io::repeat(0), n), w).map(|_| ())
}

fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, key: &str, v: &GgufValue) -> io::Result<()> {
    match v {
        GgufValue::U8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.write_all(&[u8::from(*x)]),
        GgufValue::String(s) => write_string(w, s),
        GgufValue::Array(a) => {
            if let Some(bad) = a.values.iter().find(|v| v.value_type() != a.elem_type) {
                return Err(invalid(format!(
                    "metadata key {key:?}: an array of {:?} holds a {:?}",
                    a.elem_type,
                    bad.value_type()
                )));
            }
            w.write_all(&(a.elem_type as u32).to_le_bytes())?;
            w.write_all(&(a.values.len() as u64).to_le_bytes())?;
            a.values.iter().try_for_each(|v| write_value(w, key, v))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::gguf::{GgufArray, GgufValueType};

    #[test]
    fn rejects_inconsistent_input() {
        let mut w = GgufWriter::new();
        w.add_tensor_f32("t", &[3, 2], &[0.0; 5]);
        let err = w.write_to(io::sink()).unwrap_err();
        assert!(err.to_string().contains("needs 24 bytes, got 20"), "{err}");

        let mut w = GgufWriter::new();
        w.add_kv(
            "mixed",
            GgufValue::Array(GgufArray {
                elem_type: GgufValueType::U32,
                values: vec![GgufValue::U32(1), GgufValue::I32(2)],
            }),
        );
        assert!(w.write_to(io::sink()).is_err());

        let mut w = GgufWriter::new();
        w.add_kv("a", 1u32).add_kv("a", 2u32);
        assert!(w.write_to(io::sink()).is_err());

        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", 3u32);
        assert!(w.write_to(io::sink()).is_err());
    }

    #[test]
    fn honours_a_custom_alignment() {
        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", 64u32);
        w.add_tensor_f32("a", &[3], &[1.0; 3]);
        w.add_tensor_f32("b", &[1], &[2.0]);
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        let h = crate::gguf::GgufHeader::read(&out[..], 1 << 20).unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_offset % 64, 0);
        assert_eq!(h.tensors[1].offset, 64);
        assert_eq!(out.len() as u64, h.data_offset + 128);
        let at = usize::try_from(h.data_offset + 64).unwrap();
        assert_eq!(out[at..at + 4], 2.0f32.to_le_bytes());
    }

    #[test]
    fn write_file_is_atomic_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", "llama");
        w.write_file(&p).unwrap();
        assert!(crate::gguf::has_gguf_magic(&p).unwrap());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.gguf")]);
        assert!(
            w.write_file(&dir.path().join("no/such/dir/x.gguf"))
                .is_err()
        );
    }
}
