//! systemd's readiness protocol (`Type=notify`): when `NOTIFY_SOCKET` is set, moss says
//! `READY=1` once its listeners are bound and `STOPPING=1` when it begins a graceful stop, as
//! datagrams to that socket (a path, or an abstract name written with a leading `@`). Without
//! the variable, nothing happens.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one. Failures are
/// logged: the service works the same without a manager listening.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| -> std::io::Result<usize> {
        let socket = UnixDatagram::unbound()?;
        let target = target.to_string_lossy();
        match target.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            _ => socket.send_to(state.as_bytes(), target.as_ref()),
        }
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify the service manager");
    }
}
