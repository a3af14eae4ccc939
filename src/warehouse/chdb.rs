//! The embedded ClickHouse engine: chDB's `libchdb.so`, bound at run time with
//! `libloading` (no header, no build-time download).
//!
//! Rules (measured, see the event-spine issue): one engine and one data path
//! per process; one connection per concurrent worker (a connection runs one
//! statement at a time); every connection is closed before the process exits
//! (an `atexit` hook closes any still open); user values only as query
//! parameters; data only through the insert-stream channel, never inline.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::WarehouseError;

type Conn = *mut c_void; // chdb_connection
type Res = *mut c_void; // chdb_result *
type Stream = *mut c_void; // chdb_insert_stream

/// The C functions used, each named once: its field in [`Api`], its symbol in
/// `libchdb.so` and its signature. Expands to the struct and to `bind`, which
/// looks every symbol up.
macro_rules! chdb_api {
    ($($field:ident = $symbol:literal: $sig:ty,)*) => {
        struct Api {
            $($field: $sig,)*
        }

        /// Every symbol of [`Api`], looked up in `lib`.
        ///
        /// # Safety
        /// `lib` must be chDB's library, whose symbols have the signatures given here.
        unsafe fn bind(lib: &libloading::Library, path: &Path) -> Result<Api, String> {
            Ok(Api {
                $($field: *lib
                    .get($symbol)
                    .map_err(|e| format!("{} lacks {}: {e}", path.display(), String::from_utf8_lossy($symbol)))?,)*
            })
        }
    };
}

chdb_api! {
    connect = b"chdb_connect": unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut Conn,
    close_conn = b"chdb_close_conn": unsafe extern "C" fn(*mut Conn),
    query_with_params_n = b"chdb_query_with_params_n": unsafe extern "C" fn(
        Conn,
        *const c_char,
        usize,
        *const c_char,
        usize,
        *const *const c_char,
        *const usize,
        *const *const c_char,
        *const usize,
        usize,
    ) -> Res,
    result_buffer = b"chdb_result_buffer": unsafe extern "C" fn(Res) -> *mut c_char,
    result_length = b"chdb_result_length": unsafe extern "C" fn(Res) -> usize,
    result_error = b"chdb_result_error": unsafe extern "C" fn(Res) -> *const c_char,
    destroy_result = b"chdb_destroy_query_result": unsafe extern "C" fn(Res),
    stream_insert_n = b"chdb_stream_insert_n": unsafe extern "C" fn(Conn, *const c_char, usize, *const c_char, usize) -> Stream,
    stream_append = b"chdb_stream_append": unsafe extern "C" fn(Stream, *const c_void, usize) -> c_int,
    stream_done = b"chdb_stream_done": unsafe extern "C" fn(Stream) -> Res,
    stream_insert_error = b"chdb_stream_insert_error": unsafe extern "C" fn(Stream) -> *const c_char,
    destroy_insert_stream = b"chdb_destroy_insert_stream": unsafe extern "C" fn(Stream),
    version = b"chdb_version": unsafe extern "C" fn() -> *const c_char,
}

// SAFETY: the API is a table of C function pointers into a library that is
// never unloaded; calling them from any thread is allowed by chDB.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn load(path: &Path) -> Result<&'static Api, WarehouseError> {
    let api = API.get_or_init(|| unsafe {
        let lib = libloading::Library::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        bind(lib, path)
    });
    api.as_ref().map_err(|e| WarehouseError::Unavailable(e.clone()))
}

/// Which connections a statement may use ([`Engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    General,
    /// A short read a person waits for, made rarely (the individual view).
    Interactive,
}

/// An open connection handle. Guarded by a `Mutex` in [`Engine`].
struct Handle(*mut Conn);
// SAFETY: a handle is only used under its mutex, by one thread at a time.
unsafe impl Send for Handle {}

/// Every connection opened by this process, closed by the `atexit` hook if
/// the owner did not close it.
static OPEN: Mutex<Vec<&'static Mutex<Handle>>> = Mutex::new(Vec::new());
static ENGINE_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

extern "C" {
    fn atexit(cb: extern "C" fn()) -> c_int;
}

extern "C" fn close_all_at_exit() {
    if let Ok(mut open) = OPEN.lock() {
        for h in open.drain(..) {
            if let Ok(mut h) = h.lock() {
                close_handle(&mut h);
            }
        }
    }
}

fn close_handle(h: &mut Handle) {
    if !h.0.is_null() {
        if let Some(Ok(api)) = API.get() {
            unsafe { (api.close_conn)(h.0) };
        }
        h.0 = std::ptr::null_mut();
    }
}

/// The embedded engine: `n` connections to one data path, and one more kept for short
/// interactive reads ([`Lane::Interactive`]: the individual view), so that those never wait
/// for a connection held by an insert, a rollup refresh or a scan.
pub struct Engine {
    api: &'static Api,
    /// The general connections, then the interactive one (last).
    conns: Vec<&'static Mutex<Handle>>,
    next: std::sync::atomic::AtomicUsize,
    pub version: String,
}

impl Engine {
    /// `connections` and `background_pool` are at least 1 (`WarehouseSettings::validate`, which
    /// `Warehouse::open` runs first).
    pub fn open(lib: &Path, data_path: &Path, connections: usize, background_pool: usize) -> Result<Engine, WarehouseError> {
        let api = load(lib)?;
        {
            let mut current = ENGINE_PATH.lock().expect("engine path lock");
            match current.as_ref() {
                Some(p) if p != data_path => {
                    return Err(WarehouseError::Unavailable(format!(
                        "this process already runs the embedded engine on {}; one data path per process",
                        p.display()
                    )))
                }
                Some(_) => {}
                None => {
                    static HOOK: std::sync::Once = std::sync::Once::new();
                    HOOK.call_once(|| unsafe {
                        atexit(close_all_at_exit);
                    });
                    *current = Some(data_path.to_owned());
                }
            }
        }
        std::fs::create_dir_all(data_path).map_err(|e| WarehouseError::Unavailable(format!("{}: {e}", data_path.display())))?;
        let mut conns = Vec::new();
        for _ in 0..connections + 1 {
            // The engine's merge/mutation pool: chDB's own default is 2 threads (4 tasks), so an
            // erasure's mutations wait behind background merges and their scheduler backs off
            // for seconds; ClickHouse server's default is 16.
            let args = [
                CString::new("learnvault").unwrap(),
                CString::new(format!("--path={}", data_path.display())).unwrap(),
                CString::new(format!("--background_pool_size={background_pool}")).unwrap(),
            ];
            let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
            let c = unsafe { (api.connect)(argv.len() as c_int, argv.as_mut_ptr()) };
            if c.is_null() || unsafe { (*c).is_null() } {
                return Err(WarehouseError::Unavailable(format!(
                    "chDB refused to open {} (is another process using it?)",
                    data_path.display()
                )));
            }
            let h: &'static Mutex<Handle> = Box::leak(Box::new(Mutex::new(Handle(c))));
            OPEN.lock().expect("open list").push(h);
            conns.push(h);
        }
        let version = unsafe { CStr::from_ptr((api.version)()) }.to_string_lossy().into_owned();
        Ok(Engine { api, conns, next: Default::default(), version })
    }

    /// A free connection if one is (starting from the next in turn), else the next in turn:
    /// a short statement does not queue behind a long scan or an insert while another
    /// connection idles.
    /// Interactive reads take the interactive connection, or a free general one when another
    /// interactive read holds it; other statements only the general ones.
    fn conn(&self, lane: Lane) -> Result<std::sync::MutexGuard<'static, Handle>, WarehouseError> {
        let general = self.conns.len() - 1;
        if lane == Lane::Interactive {
            let own = self.conns[general];
            match own.try_lock() {
                Ok(h) => return Ok(h),
                Err(std::sync::TryLockError::WouldBlock) => {
                    for c in &self.conns[..general] {
                        if let Ok(h) = c.try_lock() {
                            return Ok(h);
                        }
                    }
                    return own.lock().map_err(|_| WarehouseError::Unavailable("connection poisoned".into()));
                }
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(WarehouseError::Unavailable("connection poisoned".into())),
            }
        }
        let n = general;
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
        for k in 0..n {
            match self.conns[(i + k) % n].try_lock() {
                Ok(h) => return Ok(h),
                Err(std::sync::TryLockError::WouldBlock) => {}
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(WarehouseError::Unavailable("connection poisoned".into())),
            }
        }
        self.conns[i].lock().map_err(|_| WarehouseError::Unavailable("connection poisoned".into()))
    }

    /// Run one statement with `{name:Type}` parameters; returns the output in `format`.
    pub fn query(&self, sql: &str, format: &str, params: &[(&str, String)], lane: Lane) -> Result<Vec<u8>, WarehouseError> {
        let h = self.conn(lane)?;
        if h.0.is_null() {
            return Err(WarehouseError::Unavailable("the embedded engine is closed".into()));
        }
        let names: Vec<*const c_char> = params.iter().map(|(n, _)| n.as_ptr() as *const c_char).collect();
        let name_lens: Vec<usize> = params.iter().map(|(n, _)| n.len()).collect();
        let values: Vec<*const c_char> = params.iter().map(|(_, v)| v.as_ptr() as *const c_char).collect();
        let value_lens: Vec<usize> = params.iter().map(|(_, v)| v.len()).collect();
        unsafe {
            let res = (self.api.query_with_params_n)(
                *h.0,
                sql.as_ptr() as *const c_char,
                sql.len(),
                format.as_ptr() as *const c_char,
                format.len(),
                names.as_ptr(),
                name_lens.as_ptr(),
                values.as_ptr(),
                value_lens.as_ptr(),
                params.len(),
            );
            self.take_result(res)
        }
    }

    unsafe fn take_result(&self, res: Res) -> Result<Vec<u8>, WarehouseError> {
        if res.is_null() {
            return Err(WarehouseError::Unavailable("chDB returned no result".into()));
        }
        let err = (self.api.result_error)(res);
        let out = if !err.is_null() {
            let msg = CStr::from_ptr(err).to_string_lossy().into_owned();
            Err(WarehouseError::classify(msg))
        } else {
            let buf = (self.api.result_buffer)(res);
            let len = (self.api.result_length)(res);
            Ok(if buf.is_null() || len == 0 { Vec::new() } else { std::slice::from_raw_parts(buf as *const u8, len).to_vec() })
        };
        (self.api.destroy_result)(res);
        out
    }

    /// Stream `data` (in `format`) into `insert_sql` (an INSERT without FORMAT or data).
    pub fn insert(&self, insert_sql: &str, format: &str, data: &[u8]) -> Result<(), WarehouseError> {
        let h = self.conn(Lane::General)?;
        if h.0.is_null() {
            return Err(WarehouseError::Unavailable("the embedded engine is closed".into()));
        }
        unsafe {
            let s = (self.api.stream_insert_n)(*h.0, insert_sql.as_ptr() as *const c_char, insert_sql.len(), format.as_ptr() as *const c_char, format.len());
            let stream_err = |s: Stream| {
                let e = (self.api.stream_insert_error)(s);
                (!e.is_null()).then(|| CStr::from_ptr(e).to_string_lossy().into_owned())
            };
            if let Some(e) = stream_err(s) {
                (self.api.destroy_insert_stream)(s);
                return Err(WarehouseError::classify(e));
            }
            for chunk in data.chunks(1 << 20) {
                if (self.api.stream_append)(s, chunk.as_ptr() as *const c_void, chunk.len()) != 0 {
                    let e = stream_err(s).unwrap_or_else(|| "append failed".into());
                    (self.api.destroy_insert_stream)(s);
                    return Err(WarehouseError::classify(e));
                }
            }
            let res = (self.api.stream_done)(s);
            let out = self.take_result(res);
            (self.api.destroy_insert_stream)(s);
            out.map(|_| ())
        }
    }

    /// Close every connection (the last close shuts the engine down).
    pub fn close(&self) {
        let mut open = OPEN.lock().expect("open list");
        for h in &self.conns {
            if let Ok(mut g) = h.lock() {
                close_handle(&mut g);
            }
            open.retain(|o| !std::ptr::eq(*o, *h));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}
