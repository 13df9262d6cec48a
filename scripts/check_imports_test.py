"""Tests of scripts/check-imports.py on small crates made in a temporary directory.

Run: python3 -m unittest discover -s scripts -p 'check_imports_test.py'
"""

import importlib.util
import tempfile
import unittest
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "check_imports", Path(__file__).with_name("check-imports.py")
)
check_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_imports)


def crate(files: dict[str, str]) -> Path:
    root = Path(tempfile.mkdtemp())
    for name, text in files.items():
        path = root / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def edges(files: dict[str, str]) -> dict[str, set[str]]:
    return check_imports.graph(crate(files) / "src")[0]


class Graph(unittest.TestCase):
    def test_paths_from_the_crate_root_flat_grouped_nested_and_over_lines(self):
        e = edges(
            {
                "lib.rs": "mod a; mod b; mod c; mod d;",
                "a.rs": "use crate::b::X;\nfn f() { crate::c::g(); }",
                "b.rs": "use crate::{\n    c::{P, Q},\n    d::R,\n};",
                "c.rs": "",
                "d.rs": "",
            }
        )
        self.assertEqual(e, {"a": {"b", "c"}, "b": {"c", "d"}, "c": set(), "d": set()})

    def test_names_the_root_re_exports_count_as_uses_of_their_module(self):
        e = edges(
            {
                "lib.rs": "mod links; mod worker; pub use worker::{Worker, Parts as P};",
                "links.rs": "fn f(w: &crate::Worker) {}\nuse crate::{P};",
                "worker.rs": "use crate::links::Links;",
            }
        )
        self.assertEqual(e["links"], {"worker"})
        self.assertEqual(check_imports.cycles(e), [["links", "worker"]])

    def test_super_chains_that_reach_the_root(self):
        e = edges(
            {
                "lib.rs": "mod a; mod c;",
                "a/mod.rs": "mod b; use super::c::X;",
                "a/b.rs": "use super::super::c::Y; use super::Z;",
                "c.rs": "",
            }
        )
        self.assertEqual(e, {"a": {"c"}, "c": set()})

    def test_comments_strings_and_test_code_do_not_count(self):
        e = edges(
            {
                "lib.rs": "mod a; mod b; mod c;",
                "a.rs": (
                    'const S: &str = "// crate::b::X"; use crate::c::Y; /* crate::b */\n'
                    "#[cfg(test)]\nmod tests { use crate::b::Z; fn f() { let _ = '{'; } }\n"
                    "#[cfg(test)]\nmod fake;\n"
                ),
                "a/fake.rs": "use crate::b::W;",
                "b.rs": 'fn f() -> &\'static str { r#"crate::a"# }',
                "c.rs": "",
            }
        )
        self.assertEqual(e, {"a": {"c"}, "b": set(), "c": set()})


class Check(unittest.TestCase):
    def test_a_cycle_and_a_feature_naming_worker_are_reported(self):
        root = crate(
            {
                "lib.rs": "mod a; mod b; mod ok;",
                "a.rs": "use crate::b::X;",
                "b.rs": "use crate::a::Y; struct Worker;",
                "ok.rs": "// Worker, in a comment only",
            }
        )
        problems = check_imports.check(root, ["b", "ok"])
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("modules in an import cycle: a -> b; b -> a", problems[0])
        self.assertIn("feature module b names `Worker`", problems[1])

    def test_a_clean_crate_passes(self):
        root = crate({"lib.rs": "mod a; mod b;", "a.rs": "use crate::b::X;", "b.rs": ""})
        self.assertEqual(check_imports.check(root, ["a", "b"]), [])


if __name__ == "__main__":
    unittest.main()
