//! One module per applet; each opens with its argh struct, whose doc comments are the
//! applet's --help.

pub mod console;
pub mod docker;
pub mod init;
pub mod runc;
pub mod shim;
pub mod start;
pub mod volume;
pub mod wait;
