"""Rewrite MODULE_PYTHON_SCRIPTS in MnetImSegment/CMakeLists.txt from the .py files on disk.

Run after adding or removing a module file; tests/test_slicer_packaging.py fails until the list
and the files agree (a file missing from the list is missing from the installed extension).
"""

import re
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "MnetImSegment"


def main() -> None:
    files = sorted(p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")
                   if "__pycache__" not in p.parts and not any(x.endswith(".egg-info") for x in p.parts))
    files.remove("MnetImSegment.py")
    body = "  ${MODULE_NAME}.py\n" + "".join(f"  {f}\n" for f in files)
    cmake = MODULE / "CMakeLists.txt"
    text = re.sub(r"set\(MODULE_PYTHON_SCRIPTS\n.*?  \)", "set(MODULE_PYTHON_SCRIPTS\n" + body + "  )",
                  cmake.read_text(), flags=re.S)
    cmake.write_text(text)
    print(body, end="")


if __name__ == "__main__":
    main()
