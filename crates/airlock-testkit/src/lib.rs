//! Builders for tiny synthetic model files, for tests only (never a normal dependency).
//!
//! Real models are fetched by `scripts/fetch-models.sh`; unit tests build their own inputs
//! here so they run offline in milliseconds.
//!
//! ```
//! let bytes = airlock_testkit::safetensors::build(&[airlock_testkit::safetensors::Tensor::f32("w", &[2, 2])]);
//! assert_eq!(&bytes[8..9], b"{");
//! ```

#![expect(
    clippy::unwrap_used,
    reason = "test-only helpers; a failure is a bug in the test"
)]

pub mod strace;

pub mod safetensors {
    //! safetensors files.

    /// One F32 tensor to write.
    pub struct Tensor {
        name: String,
        shape: Vec<u64>,
    }

    impl Tensor {
        /// An F32 tensor of `shape`, filled with a counting pattern.
        pub fn f32(name: &str, shape: &[u64]) -> Self {
            Self {
                name: name.into(),
                shape: shape.to_vec(),
            }
        }
    }

    /// A valid safetensors file holding `tensors` back to back.
    pub fn build(tensors: &[Tensor]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for t in tensors {
            let n: u64 = t.shape.iter().product();
            let begin = data.len() as u64;
            for i in 0..n {
                data.extend_from_slice(&(i as f32).to_le_bytes());
            }
            header.insert(t.name.clone(), serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [begin, data.len()]}));
        }
        let header = serde_json::to_string(&header).unwrap();
        build_with_header(&header, data.len())
    }

    /// One tensor named `name`, of `dtype` (one byte per element, e.g. `U8`), holding `data`.
    pub fn build_with_data(name: &str, dtype: &str, data: &[u8]) -> Vec<u8> {
        let header = serde_json::json!({
            name: {"dtype": dtype, "shape": [data.len()], "data_offsets": [0, data.len()]}
        })
        .to_string();
        let mut out = build_with_header(&header, 0);
        out.extend_from_slice(data);
        out
    }

    /// A file with exactly this header text and `data_len` zero bytes of data.
    pub fn build_with_header(header: &str, data_len: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data_len, 0);
        out
    }
}

pub mod gguf {
    //! GGUF v3 files.

    /// A metadata value.
    pub enum MetaValue {
        /// Type 4.
        U32(u32),
        /// Type 8.
        Str(String),
        /// Type 9 of type 8.
        StrArray(Vec<String>),
    }

    enum Kv {
        Typed(String, MetaValue),
        Raw(Vec<u8>),
    }

    struct TensorSpec {
        name: String,
        shape: Vec<u64>,
        ty: u32,
        offset: Option<u64>,
    }

    /// Builds a GGUF v3 file with alignment 32.
    #[derive(Default)]
    pub struct GgufBuilder {
        kvs: Vec<Kv>,
        tensors: Vec<TensorSpec>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn type_bytes(ty: u32, elements: u64) -> u64 {
        match ty {
            0 => elements * 4,
            1 => elements * 2,
            2 => elements / 32 * 18,
            3 => elements / 32 * 20,
            8 => elements / 32 * 34,
            _ => elements,
        }
    }

    impl GgufBuilder {
        /// An empty file: no metadata, no tensors.
        pub fn new() -> Self {
            Self::default()
        }

        /// Adds a metadata pair.
        pub fn meta(mut self, key: &str, value: MetaValue) -> Self {
            self.kvs.push(Kv::Typed(key.into(), value));
            self
        }

        /// Adds a string pair whose length field claims `len` bytes (no bytes follow).
        pub fn raw_kv_with_string_len(mut self, key: &str, len: u64) -> Self {
            let mut raw = Vec::new();
            put_str(&mut raw, key);
            raw.extend_from_slice(&8u32.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
            self.kvs.push(Kv::Raw(raw));
            self
        }

        /// Adds an array pair whose count field claims `count` elements of `elem` type.
        pub fn raw_kv_with_array_len(mut self, key: &str, elem: u32, count: u64) -> Self {
            let mut raw = Vec::new();
            put_str(&mut raw, key);
            raw.extend_from_slice(&9u32.to_le_bytes());
            raw.extend_from_slice(&elem.to_le_bytes());
            raw.extend_from_slice(&count.to_le_bytes());
            self.kvs.push(Kv::Raw(raw));
            self
        }

        /// Adds a tensor of ggml type `ty`, placed after the previous one.
        pub fn tensor(mut self, name: &str, shape: &[u64], ty: u32) -> Self {
            self.tensors.push(TensorSpec {
                name: name.into(),
                shape: shape.to_vec(),
                ty,
                offset: None,
            });
            self
        }

        /// Adds a tensor at an explicit data offset.
        pub fn tensor_at(mut self, name: &str, shape: &[u64], ty: u32, offset: u64) -> Self {
            self.tensors.push(TensorSpec {
                name: name.into(),
                shape: shape.to_vec(),
                ty,
                offset: Some(offset),
            });
            self
        }

        /// The file's bytes.
        pub fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
            for kv in &self.kvs {
                match kv {
                    Kv::Raw(raw) => out.extend_from_slice(raw),
                    Kv::Typed(key, value) => {
                        put_str(&mut out, key);
                        match value {
                            MetaValue::U32(v) => {
                                out.extend_from_slice(&4u32.to_le_bytes());
                                out.extend_from_slice(&v.to_le_bytes());
                            }
                            MetaValue::Str(s) => {
                                out.extend_from_slice(&8u32.to_le_bytes());
                                put_str(&mut out, s);
                            }
                            MetaValue::StrArray(items) => {
                                out.extend_from_slice(&9u32.to_le_bytes());
                                out.extend_from_slice(&8u32.to_le_bytes());
                                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                                for s in items {
                                    put_str(&mut out, s);
                                }
                            }
                        }
                    }
                }
            }
            let mut cursor = 0u64;
            let mut data_end = 0u64;
            for t in &self.tensors {
                put_str(&mut out, &t.name);
                out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
                for d in &t.shape {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&t.ty.to_le_bytes());
                let offset = t.offset.unwrap_or(cursor);
                out.extend_from_slice(&offset.to_le_bytes());
                let n = type_bytes(t.ty, t.shape.iter().product());
                cursor = (offset + n).div_ceil(32) * 32;
                data_end = data_end.max(offset + n);
            }
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.resize(out.len() + data_end as usize, 0x5a);
            out
        }
    }
}

pub mod gguf_edit {
    //! Rewrites the metadata of a real GGUF file, keeping its tensors: for model files that
    //! are well formed but hostile (a looping chat template, head counts that do not divide).

    use std::fs::File;
    use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
    use std::path::Path;

    use super::gguf::MetaValue;

    fn read_u32(r: &mut impl Read) -> io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(r: &mut impl Read) -> io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_string(r: &mut impl Read) -> io::Result<Vec<u8>> {
        let len = read_u64(r)?;
        let mut b = vec![0u8; len as usize];
        r.read_exact(&mut b)?;
        Ok(b)
    }

    /// Reads one value of `ty`, appending its raw bytes to `raw`; returns it if it is a u32.
    fn read_value(r: &mut impl Read, ty: u32, raw: &mut Vec<u8>) -> io::Result<Option<u64>> {
        let fixed = match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        if let Some(n) = fixed {
            let mut b = vec![0u8; n];
            r.read_exact(&mut b)?;
            raw.extend_from_slice(&b);
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&b);
            return Ok(Some(u64::from_le_bytes(v)));
        }
        match ty {
            8 => {
                let s = read_string(r)?;
                raw.extend_from_slice(&(s.len() as u64).to_le_bytes());
                raw.extend_from_slice(&s);
            }
            9 => {
                let elem = read_u32(r)?;
                let count = read_u64(r)?;
                raw.extend_from_slice(&elem.to_le_bytes());
                raw.extend_from_slice(&count.to_le_bytes());
                for _ in 0..count {
                    read_value(r, elem, raw)?;
                }
            }
            _ => return Err(io::Error::other(format!("unknown GGUF type {ty}"))),
        }
        Ok(None)
    }

    fn encode(key: &str, value: &MetaValue) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        match value {
            MetaValue::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            MetaValue::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            MetaValue::StrArray(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out
    }

    /// Copies the GGUF `src` to `dst` with each `(key, value)` of `edits` replacing the
    /// metadata pair of that key (or added if absent). Tensor data is copied unchanged.
    pub fn rewrite(src: &Path, dst: &Path, edits: &[(&str, MetaValue)]) -> io::Result<()> {
        let mut r = BufReader::new(File::open(src)?);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        let version = read_u32(&mut r)?;
        let tensors = read_u64(&mut r)?;
        let kvs = read_u64(&mut r)?;
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut alignment = 32u64;
        for _ in 0..kvs {
            let key = String::from_utf8(read_string(&mut r)?).map_err(io::Error::other)?;
            let ty = read_u32(&mut r)?;
            let mut raw = Vec::new();
            raw.extend_from_slice(&(key.len() as u64).to_le_bytes());
            raw.extend_from_slice(key.as_bytes());
            raw.extend_from_slice(&ty.to_le_bytes());
            let value = read_value(&mut r, ty, &mut raw)?;
            if key == "general.alignment" {
                alignment = value.unwrap_or(32);
            }
            entries.push((key, raw));
        }
        let mut infos = Vec::new();
        for _ in 0..tensors {
            let name = read_string(&mut r)?;
            infos.extend_from_slice(&(name.len() as u64).to_le_bytes());
            infos.extend_from_slice(&name);
            let dims = read_u32(&mut r)?;
            infos.extend_from_slice(&dims.to_le_bytes());
            for _ in 0..dims {
                infos.extend_from_slice(&read_u64(&mut r)?.to_le_bytes());
            }
            infos.extend_from_slice(&read_u32(&mut r)?.to_le_bytes());
            infos.extend_from_slice(&read_u64(&mut r)?.to_le_bytes());
        }
        let data_start = r.stream_position()?.div_ceil(alignment) * alignment;
        for (key, value) in edits {
            let raw = encode(key, value);
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = raw,
                None => entries.push(((*key).to_owned(), raw)),
            }
        }
        let mut w = BufWriter::new(File::create(dst)?);
        let mut header = Vec::new();
        header.extend_from_slice(&magic);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&tensors.to_le_bytes());
        header.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (_, raw) in &entries {
            header.extend_from_slice(raw);
        }
        header.extend_from_slice(&infos);
        header.resize(
            (header.len() as u64).div_ceil(alignment) as usize * alignment as usize,
            0,
        );
        w.write_all(&header)?;
        r.seek(SeekFrom::Start(data_start))?;
        io::copy(&mut r, &mut w)?;
        w.flush()
    }
}

pub mod tar {
    //! Hand-made tar entries, including the hostile kinds a bundle reader must refuse.

    /// One 512-byte ustar header for `name` with `typeflag` and `size`, checksum filled in,
    /// followed by `data` padded to a block.
    pub fn entry(name: &str, typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        if typeflag == b'2' || typeflag == b'1' {
            h[157..163].copy_from_slice(b"target");
        }
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    /// The end-of-archive marker.
    pub fn end() -> Vec<u8> {
        vec![0u8; 1024]
    }
}

#[cfg(feature = "engine")]
pub mod engine {
    //! A scripted engine behind the real engine interface, so that server tests run
    //! in-process (`oneshot`) with no model: each request takes the next scripted reply
    //! (or, with none left, an echo of its last message), and every request is kept for
    //! the test to inspect.
    //!
    //! ```
    //! use airlock_engine::{ChatEngine, ChatParams, ChatRequest, Prompt, RequestLimits};
    //! use airlock_testkit::engine::{Reply, ScriptedChat};
    //! let engine = ScriptedChat::new([Reply::text(["Par", "is"])]);
    //! let request = ChatRequest::new(Prompt::Text("Capital?".into()), ChatParams::default(),
    //!     &RequestLimits::default()).unwrap();
    //! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    //! let (text, _) = runtime.block_on(async { engine.start(request).await?.collect().await })
    //!     .unwrap();
    //! assert_eq!(text, "Paris");
    //! ```

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use airlock_engine::{
        BoxFuture, ChatEngine, ChatEvent, ChatRequest, ChatStream, Embedder, Ending, EngineKind,
        EngineState, EngineStatus, Error, FinishReason, Prompt, Result, Usage, embed::Embeddings,
    };
    use futures_util::StreamExt as _;

    /// What the engine does with one request.
    #[derive(Debug)]
    pub enum Reply {
        /// Refuse it at start with this error.
        Refuse(Error),
        /// Answer with these events, in order.
        Events(Vec<Result<ChatEvent>>),
        /// Send these events, then never finish (until the caller hangs up).
        Hang(Vec<ChatEvent>),
    }

    impl Reply {
        /// An answer made of `pieces` that ends its turn, with usage counting a ten-token
        /// prompt and one token per piece.
        pub fn text<'a>(pieces: impl IntoIterator<Item = &'a str>) -> Self {
            let mut events: Vec<Result<ChatEvent>> = pieces
                .into_iter()
                .map(|p| Ok(ChatEvent::Text(p.to_owned())))
                .collect();
            let completion_tokens = events.len();
            events.push(Ok(ChatEvent::Done(Ending {
                reason: FinishReason::Stop,
                stop_sequence: None,
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens,
                    cached_tokens: 0,
                },
            })));
            Self::Events(events)
        }
    }

    /// A chat engine that answers from a script.
    #[derive(Debug)]
    pub struct ScriptedChat {
        replies: Mutex<VecDeque<Reply>>,
        requests: Mutex<Vec<ChatRequest>>,
        open: Arc<AtomicUsize>,
        state: Mutex<EngineState>,
        /// Pause before each event, so streams interleave with other work.
        pace: Duration,
    }

    impl ScriptedChat {
        /// An engine that gives `replies` to its first requests in order, then echoes.
        pub fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
            Self {
                replies: Mutex::new(replies.into_iter().collect()),
                requests: Mutex::new(Vec::new()),
                open: Arc::new(AtomicUsize::new(0)),
                state: Mutex::new(EngineState::Ready),
                pace: Duration::ZERO,
            }
        }

        /// The same engine, waiting `pace` before each event.
        pub fn paced(mut self, pace: Duration) -> Self {
            self.pace = pace;
            self
        }

        /// Adds replies for the next requests.
        pub fn push(&self, reply: Reply) {
            self.replies.lock().unwrap().push_back(reply);
        }

        /// Every request taken so far, in order.
        pub fn requests(&self) -> Vec<ChatRequest> {
            self.requests.lock().unwrap().clone()
        }

        /// Answers still being read (a dropped answer is no longer open).
        pub fn open_streams(&self) -> usize {
            self.open.load(Ordering::SeqCst)
        }

        /// Sets the state [`ChatEngine::status`] reports.
        pub fn set_state(&self, state: EngineState) {
            *self.state.lock().unwrap() = state;
        }

        fn echo(request: &ChatRequest) -> Reply {
            let text = match request.prompt() {
                Prompt::Chat(messages) => messages
                    .last()
                    .map(|m| m.content.clone())
                    .unwrap_or_default(),
                Prompt::Text(text) => text.clone(),
            };
            Reply::text([text.as_str()])
        }
    }

    /// Counts an answer as open until it is dropped.
    struct OpenGuard(Arc<AtomicUsize>);

    impl Drop for OpenGuard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl ChatEngine for ScriptedChat {
        fn start(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream>> {
            let reply = self
                .replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Self::echo(&request));
            self.requests.lock().unwrap().push(request);
            let (events, hang) = match reply {
                Reply::Refuse(error) => return Box::pin(std::future::ready(Err(error))),
                Reply::Events(events) => (events, false),
                Reply::Hang(events) => (events.into_iter().map(Ok).collect(), true),
            };
            self.open.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(Arc::clone(&self.open));
            let pace = self.pace;
            let stream = futures_util::stream::iter(events)
                .then(move |event| async move {
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                    event
                })
                .chain(if hang {
                    futures_util::stream::pending().left_stream()
                } else {
                    futures_util::stream::empty().right_stream()
                })
                .map(move |event| {
                    let _ = &guard;
                    event
                });
            Box::pin(std::future::ready(Ok(ChatStream::new(stream, Some(10)))))
        }

        /// One token per word of every message, and two per message for its framing.
        fn count_tokens(&self, prompt: &Prompt) -> Result<usize> {
            Ok(match prompt {
                Prompt::Chat(messages) => messages
                    .iter()
                    .map(|m| 2 + m.content.split_whitespace().count())
                    .sum(),
                Prompt::Text(text) => text.split_whitespace().count(),
            })
        }

        fn status(&self) -> EngineStatus {
            EngineStatus {
                state: self.state.lock().unwrap().clone(),
                ..EngineStatus::ready(EngineKind::Scripted, self.open_streams(), 0)
            }
        }
    }

    /// An embedding engine that gives each text the normalised bag of its lowercase words,
    /// each word hashed to one of `dimension` axes (so texts sharing words are close), or
    /// refuses with the scripted errors first. Tokens are words, plus two.
    #[derive(Debug)]
    pub struct ScriptedEmbedder {
        dimension: usize,
        refusals: Mutex<VecDeque<Error>>,
        calls: AtomicUsize,
        texts: AtomicUsize,
    }

    impl ScriptedEmbedder {
        /// Vectors of `dimension`; the first requests get `refusals`, in order.
        pub fn new(dimension: usize, refusals: impl IntoIterator<Item = Error>) -> Self {
            Self {
                dimension,
                refusals: Mutex::new(refusals.into_iter().collect()),
                calls: AtomicUsize::new(0),
                texts: AtomicUsize::new(0),
            }
        }

        /// Requests taken so far.
        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        /// Texts embedded so far.
        pub fn texts(&self) -> usize {
            self.texts.load(Ordering::SeqCst)
        }

        /// The vector of `text`.
        pub fn vector(&self, text: &str) -> Vec<f32> {
            let mut v = vec![0.0f32; self.dimension];
            for word in text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                // FNV-1a: stable across runs and platforms.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in word.to_lowercase().bytes() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                v[(h % self.dimension as u64) as usize] += 1.0;
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            } else {
                v[0] = 1.0;
            }
            v
        }
    }

    impl Embedder for ScriptedEmbedder {
        fn dimension(&self) -> usize {
            self.dimension
        }

        fn max_tokens(&self) -> usize {
            512
        }

        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.split_whitespace().count() + 2)
        }

        fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Embeddings>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(error) = self.refusals.lock().unwrap().pop_front() {
                return Box::pin(std::future::ready(Err(error)));
            }
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            let text_tokens: Vec<usize> =
                texts.iter().map(|t| t.split_whitespace().count()).collect();
            let vectors = texts.iter().map(|t| self.vector(t)).collect();
            Box::pin(std::future::ready(Ok(Embeddings {
                vectors,
                tokens: text_tokens.iter().sum(),
                text_tokens,
            })))
        }

        fn status(&self) -> EngineStatus {
            EngineStatus::ready(EngineKind::Scripted, 0, 0)
        }
    }
}

#[cfg(feature = "documents")]
pub mod documents {
    //! Office documents built in tests: PDFs with text placed where a layout puts it
    //! (headings, paragraphs, tables), and DOCX files from paragraphs, headings and tables.
    //!
    //! ```
    //! use airlock_testkit::documents::{Pdf, docx, DocxBlock};
    //! let pdf = Pdf::new().heading("Leave").line("Annual leave is 25 days.").build();
    //! assert!(pdf.starts_with(b"%PDF"));
    //! let word = docx(&[DocxBlock::Paragraph("Hello".into())]);
    //! assert!(word.starts_with(b"PK"));
    //! ```

    use std::io::Write as _;

    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};

    /// Page height, points (A4).
    const HEIGHT: f32 = 842.0;
    /// Body text size.
    const BODY: f32 = 10.0;

    /// A PDF built line by line, top to bottom, in Courier.
    #[derive(Debug, Default)]
    pub struct Pdf {
        pages: Vec<Vec<(f32, f32, f32, String)>>,
        y: f32,
        title: Option<String>,
    }

    impl Pdf {
        /// An empty one-page document.
        pub fn new() -> Self {
            Self {
                pages: vec![Vec::new()],
                y: 60.0,
                title: None,
            }
        }

        /// Sets the document's title (its Info dictionary).
        pub fn title(mut self, title: &str) -> Self {
            self.title = Some(title.into());
            self
        }

        fn put(&mut self, x: f32, size: f32, text: &str) {
            if let Some(page) = self.pages.last_mut() {
                page.push((x, HEIGHT - self.y, size, text.to_owned()));
            }
        }

        /// A heading line in large type, with space around it.
        pub fn heading(mut self, text: &str) -> Self {
            self.y += 12.0;
            self.put(72.0, 20.0, text);
            self.y += 30.0;
            self
        }

        /// A line of body text.
        pub fn line(mut self, text: &str) -> Self {
            self.put(72.0, BODY, text);
            self.y += 12.0;
            self
        }

        /// A blank line (ends a paragraph).
        pub fn gap(mut self) -> Self {
            self.y += 14.0;
            self
        }

        /// A table: each row's cells start at the same columns.
        pub fn table(mut self, rows: &[&[&str]]) -> Self {
            for row in rows {
                for (i, cell) in row.iter().enumerate() {
                    self.put(72.0 + 150.0 * i as f32, BODY, cell);
                }
                self.y += 12.0;
            }
            self.y += 14.0;
            self
        }

        /// Starts a new page.
        pub fn page(mut self) -> Self {
            self.pages.push(Vec::new());
            self.y = 60.0;
            self
        }

        /// The PDF's bytes.
        pub fn build(self) -> Vec<u8> {
            let mut doc = Document::with_version("1.5");
            let pages_id = doc.new_object_id();
            let font_id = doc.add_object(dictionary! {
                "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier",
            });
            let resources_id = doc.add_object(dictionary! {
                "Font" => dictionary! { "F1" => font_id },
            });
            let mut kids = Vec::new();
            for page in &self.pages {
                let mut operations = Vec::new();
                for (x, y, size, text) in page {
                    operations.push(Operation::new("BT", vec![]));
                    operations.push(Operation::new("Tf", vec!["F1".into(), (*size).into()]));
                    operations.push(Operation::new("Td", vec![(*x).into(), (*y).into()]));
                    operations.push(Operation::new(
                        "Tj",
                        vec![Object::string_literal(text.as_str())],
                    ));
                    operations.push(Operation::new("ET", vec![]));
                }
                let content = Content { operations };
                let content_id =
                    doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
                let page_id = doc.add_object(dictionary! {
                    "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
                });
                kids.push(page_id.into());
            }
            let count = kids.len() as i64;
            doc.objects.insert(
                pages_id,
                Object::Dictionary(dictionary! {
                    "Type" => "Pages", "Kids" => kids, "Count" => count,
                    "Resources" => resources_id,
                    "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
                }),
            );
            let catalog_id =
                doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
            doc.trailer.set("Root", catalog_id);
            if let Some(title) = &self.title {
                let info = doc
                    .add_object(dictionary! { "Title" => Object::string_literal(title.as_str()) });
                doc.trailer.set("Info", info);
            }
            let mut out = Vec::new();
            doc.save_to(&mut out).unwrap();
            out
        }
    }

    /// A block of a Word document.
    #[derive(Debug, Clone)]
    pub enum DocxBlock {
        /// A heading (`Heading1`…).
        Heading(u8, String),
        /// A paragraph.
        Paragraph(String),
        /// A table; its first row is the header.
        Table(Vec<Vec<String>>),
    }

    fn escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    fn paragraph(style: Option<String>, text: &str) -> String {
        let style = style
            .map(|s| format!("<w:pPr><w:pStyle w:val=\"{s}\"/></w:pPr>"))
            .unwrap_or_default();
        format!(
            "<w:p>{style}<w:r><w:t xml:space=\"preserve\">{}</w:t></w:r></w:p>",
            escape(text)
        )
    }

    /// A Word document holding `blocks`.
    pub fn docx(blocks: &[DocxBlock]) -> Vec<u8> {
        let mut body = String::new();
        for block in blocks {
            match block {
                DocxBlock::Heading(level, text) => {
                    body.push_str(&paragraph(Some(format!("Heading{level}")), text));
                }
                DocxBlock::Paragraph(text) => body.push_str(&paragraph(None, text)),
                DocxBlock::Table(rows) => {
                    body.push_str("<w:tbl>");
                    for row in rows {
                        body.push_str("<w:tr>");
                        for cell in row {
                            body.push_str(&format!("<w:tc>{}</w:tc>", paragraph(None, cell)));
                        }
                        body.push_str("</w:tr>");
                    }
                    body.push_str("</w:tbl>");
                }
            }
        }
        docx_with_document(&format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"><w:body>{body}</w:body></w:document>"
        ))
    }

    /// A Word container whose document part is `xml` as given.
    pub fn docx_with_document(xml: &str) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut out);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            let parts = [
                (
                    "[Content_Types].xml",
                    "<?xml version=\"1.0\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"><Default Extension=\"xml\" ContentType=\"application/xml\"/></Types>".to_owned(),
                ),
                ("word/document.xml", xml.to_owned()),
            ];
            for (name, text) in parts {
                zip.start_file(name, options).unwrap();
                zip.write_all(text.as_bytes()).unwrap();
            }
            zip.finish().unwrap();
        }
        out.into_inner()
    }

    /// A Word container whose document part unpacks to `unpacked` bytes (of spaces, which
    /// compress a thousandfold): a compression bomb.
    pub fn docx_bomb(unpacked: usize) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut out);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .large_file(true);
            zip.start_file("word/document.xml", options).unwrap();
            let block = vec![b' '; 1 << 20];
            let mut left = unpacked;
            while left > 0 {
                let n = left.min(block.len());
                zip.write_all(&block[..n]).unwrap();
                left -= n;
            }
            zip.finish().unwrap();
        }
        out.into_inner()
    }
}
