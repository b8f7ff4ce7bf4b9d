//! Warnings collected while reading and analysing a program. Each names the place it concerns
//! (file and line where known), so a user can see what the analysis had to approximate.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Note,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diag {
    pub level: Level,
    /// (interned file id, line)
    pub loc: Option<(u32, u32)>,
    pub msg: String,
}

#[derive(Debug, Default, Clone)]
pub struct Diags {
    pub list: Vec<Diag>,
}

impl Diags {
    pub fn warn(&mut self, loc: Option<(u32, u32)>, msg: impl Into<String>) {
        self.push(Level::Warning, loc, msg.into());
    }

    pub fn note(&mut self, loc: Option<(u32, u32)>, msg: impl Into<String>) {
        self.push(Level::Note, loc, msg.into());
    }

    fn push(&mut self, level: Level, loc: Option<(u32, u32)>, msg: String) {
        let d = Diag { level, loc, msg };
        if !self.list.contains(&d) {
            self.list.push(d);
        }
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diag> {
        self.list.iter().filter(|d| d.level == Level::Warning)
    }

    /// Renders one diagnostic as `file:line: warning: message`.
    pub fn render(d: &Diag, files: &[std::path::PathBuf]) -> String {
        let mut s = String::new();
        if let Some((f, l)) = d.loc {
            if let Some(p) = files.get(f as usize) {
                let _ = write!(s, "{}:{}: ", p.display(), l);
            }
        }
        let lvl = match d.level {
            Level::Note => "note",
            Level::Warning => "warning",
        };
        let _ = write!(s, "{lvl}: {}", d.msg);
        s
    }
}
