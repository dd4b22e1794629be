//! Reading an estate's manifests, the one way every command reads them: files and
//! directories listed safely ([`files`]), then decoded and validated as one estate the way
//! the API server and the operator would ([`validate`]). `validate`, `render`, `plan` and
//! `up` all start here.

pub mod files;
pub mod validate;
