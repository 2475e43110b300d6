//! backlog
