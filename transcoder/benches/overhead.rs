//! The transcoder benchmark (written in a later commit).

fn main() {}
