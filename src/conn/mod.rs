//! A client connection's plumbing that knows nothing of limpet's routing: deadlines and connection slots.

pub mod deadline;
pub mod slots;
