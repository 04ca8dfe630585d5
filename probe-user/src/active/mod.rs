//! One request made and timed: connect, TLS, HTTP over instrumented
//! streams, then the kernel's (or the socket's) timestamps lined up with
//! the user-space marks. `synack URL` and `synack monitor` both use it.

pub mod io;
pub mod prober;
pub mod stamps;
