//! Legacy PC devices on the port I/O bus.

pub mod boot_complete;
pub mod i8042;
pub mod port_sink;
pub mod serial;

pub use boot_complete::BootComplete;
pub use i8042::I8042;
pub use port_sink::PortSink;
pub use serial::{EventFdTrigger, SerialDevice, SerialDeviceState};
