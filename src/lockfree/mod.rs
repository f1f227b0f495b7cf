//! Small, generic lock-free structures, each with its loom model beside it.
//!
//! They know nothing of the allocator: they link nodes through a `Link` the caller provides,
//! so the models can run them on plain test nodes while the allocator runs them on blocks,
//! pages and heaps.

pub mod index_stack;
pub mod remote_list;
