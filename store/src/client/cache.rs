//! Caching strategies (Table 3.5).
