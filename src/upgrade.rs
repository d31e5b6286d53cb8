//! The binary upgrade's hand-over channel: the running process passes its listening sockets (descriptor passing
//! over a Unix socket, SCM_RIGHTS, as Envoy and Pingora do), its sticky sessions and its runtime state to a new
//! process started from the same path with the same arguments.
//!
//! One JSON message per line over a Unix stream socket whose path the new process finds in
//! [`SOCKET_ENV`]; the first message carries the sockets. The exchange:
//! old → `Sockets` (+ descriptors); new → `Failed` (its config did not load, it exits) or `Ready` (first health
//! checks done, not accepting yet); old stops accepting → `State`; new imports it, accepts → `Serving`; old →
//! `Learned` for every session it still learns while it lingers.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use rustix::io::{IoSlice, IoSliceMut};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// The environment variable that tells a new process where the old one waits for it.
pub const SOCKET_ENV: &str = "LIMPET_UPGRADE_SOCKET";

/// Longest message (the state can be large: a million sessions is ~50 MB of JSON).
const MAX_LINE: usize = 512 << 20;
/// Most sockets passed (listen addresses and the admin listener).
const MAX_FDS: usize = 64;

/// One message of the hand-over.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// old → new, with the listening sockets as descriptors: one per address of `addrs` (as configured), in
    /// that order, then the admin listener's when `admin` is true.
    Sockets {
        addrs: Vec<SocketAddr>,
        admin: bool,
        old_pid: u32,
        generation: u64,
    },
    /// new → old: its config did not load or apply; it exits.
    Failed { error: String },
    /// new → old: loaded, first checks done; takes over once it has the state.
    Ready { pid: u32 },
    /// old → new, once the old stopped accepting.
    State(Box<State>),
    /// new → old: accepting.
    Serving,
    /// old → new: sessions the old learned since the state.
    Learned {
        upstream: String,
        sessions: Vec<Session>,
    },
}

/// What the new process takes over besides the sockets.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct State {
    /// Sticky sessions by upstream.
    pub sessions: BTreeMap<String, Vec<Session>>,
    /// Drain overrides set through the admin API: (upstream, server, draining).
    pub drains: Vec<(String, String, bool)>,
    /// Passive marks still in force: (upstream, server, ms left; None: until an active check passes).
    pub passive: Vec<(String, String, Option<u64>)>,
    /// Servers added through the runtime API to upstreams without a state file, as state-file text.
    pub added: BTreeMap<String, String>,
    /// Runtime API edits of the config file's servers, in upstreams without a state file.
    #[serde(default)]
    pub edits: Vec<Edit>,
    /// Servers draining on their way out (removed by DNS or the API): (upstream, origin, state-file text).
    #[serde(default)]
    pub leaving: Vec<(String, String, String)>,
}

/// A runtime API edit of a server of the config file: its settings as edited, or `None` when it was removed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub upstream: String,
    pub server: String,
    pub settings: Option<EditedSettings>,
}

/// The settings the runtime API edits (`PATCH /upstreams/{name}/servers/{addr}`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EditedSettings {
    pub weight: u32,
    pub drain: bool,
    pub down: bool,
}

/// One sticky session: its sid's key in the table, its server's name, and how long ago it was seen.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub key: u64,
    pub server: String,
    pub idle_ms: u64,
}

/// One end of the hand-over channel (blocking I/O: used off the runtime's workers).
pub struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    fn new(stream: UnixStream) -> io::Result<Channel> {
        Ok(Channel {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Bounds every later read (None: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)
    }

    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }

    pub fn recv(&mut self) -> io::Result<Message> {
        let mut line = Vec::new();
        let n = io::Read::take(&mut self.reader, MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_slice(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Sends a message with descriptors attached to its first byte.
    pub fn send_with_fds(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("too many sockets to pass"));
        }
        let sent = sendmsg(
            &self.writer,
            &[IoSlice::new(&line)],
            &mut control,
            SendFlags::empty(),
        )?;
        self.writer.write_all(&line[sent..])
    }

    /// Receives the first message and the descriptors sent with it. Nothing may have been read before.
    pub fn recv_with_fds(&mut self) -> io::Result<(Message, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &self.writer,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut owned = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                owned.extend(fds);
            }
        }
        let mut line = buf[..got.bytes].to_vec();
        if !line.ends_with(b"\n") {
            self.reader.read_until(b'\n', &mut line)?;
        }
        let message = serde_json::from_slice(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((message, owned))
    }
}

/// The old side's socket, waiting for the new process; removed when dropped.
pub struct Waiting {
    listener: UnixListener,
    pub path: PathBuf,
}

impl Waiting {
    /// Listens at a fresh path in the temporary directory, reachable by this user only.
    pub fn new() -> io::Result<Waiting> {
        let path = std::env::temp_dir().join(format!(
            "limpet-upgrade-{}-{}.sock",
            std::process::id(),
            crate::clock::now_ms()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Waiting { listener, path })
    }

    /// Waits (at most `timeout`) for `child` to connect; fails early when it exits first.
    pub fn accept(&self, timeout: Duration, child: &mut Child) -> io::Result<Channel> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false)?;
                    return Channel::new(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "the new process exited ({status}) before it connected"
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the new process did not connect in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `POST /upgrade` to an admin listener (what `limpet upgrade` sends): the status and the body. Waits for the
/// answer, which comes once the new process serves (or the upgrade failed).
pub fn request(admin: SocketAddr, token: Option<&str>) -> io::Result<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let host = admin.ip();
    write!(
        stream,
        "POST /upgrade HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .trim()
        .to_string();
    Ok((status, body))
}

/// The new side: the channel to the old process, when this process was started by an upgrade.
pub fn connect_from_env() -> Option<io::Result<Channel>> {
    let path = std::env::var_os(SOCKET_ENV)?;
    // Children of this process are not part of this upgrade.
    std::env::remove_var(SOCKET_ENV);
    Some(UnixStream::connect(path).and_then(Channel::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sockets = Message::Sockets {
            admin: false,
            addrs: vec![addr],
            old_pid: 1,
            generation: 2,
        };
        a.send_with_fds(&sockets, &[listener.as_fd()]).unwrap();
        let (got, fds) = b.recv_with_fds().unwrap();
        assert!(matches!(got, Message::Sockets { ref addrs, .. } if addrs == &[addr]));
        let passed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(passed.local_addr().unwrap(), addr);
        let mut state = State::default();
        state.sessions.insert(
            "io".into(),
            vec![Session {
                key: u64::MAX,
                server: "127.0.0.1:3001".into(),
                idle_ms: 5,
            }],
        );
        a.send(&Message::State(Box::new(state))).unwrap();
        match b.recv().unwrap() {
            Message::State(s) => assert_eq!(s.sessions["io"][0].key, u64::MAX),
            other => panic!("{other:?}"),
        }
        drop(a);
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
