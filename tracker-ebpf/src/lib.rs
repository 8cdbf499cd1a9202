#![no_std]
// The library target exists so that tracker-user can name this crate as a build dependency.
