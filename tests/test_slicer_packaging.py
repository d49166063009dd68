"""The Slicer extension's packaging and GUI files, checked without Slicer.

The extension's CMake cannot be configured here (slicer-core has no Slicer build tree), and the
GUI module needs qt/ctk, so these tests read the files instead: the CMake file lists match the
files on disk, the shipped weights land where ``weights.py`` looks for them, the module parses and
has the classes Slicer expects, and the .ui file provides every widget the module uses, each of
a type the parameter-node wrapper can connect to its parameter.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "MnetImSegment"
MODULE_FILE = MODULE_DIR / "MnetImSegment.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MnetImSegment.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "MnetImSegment.png"


# --------------------------------------------------------------------------- CMake parsing
def _strip_comments(text: str) -> str:
    """Drop CMake line comments (a '#' outside double quotes, e.g. not the one in a URL)."""
    lines = []
    for line in text.splitlines():
        quoted = False
        for i, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:i]
                break
        lines.append(line)
    return "\n".join(lines)


def _calls(text: str, command: str) -> list[str]:
    """Argument text of every ``command(...)`` call; parentheses inside quotes do not end a call."""
    out = []
    for match in re.finditer(rf"\b{command}\(", text):
        depth, quoted, i = 1, False, match.end()
        while depth and i < len(text):
            char = text[i]
            if char == '"':
                quoted = not quoted
            elif not quoted and char == "(":
                depth += 1
            elif not quoted and char == ")":
                depth -= 1
            i += 1
        out.append(text[match.end():i - 1])
    return out


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """``set(NAME values...)`` of a CMake file, with ``${VAR}`` of earlier sets substituted."""
    values: dict[str, list[str]] = {}
    for body in _calls(_strip_comments(path.read_text()), "set"):
        name, *items = re.findall(r'"[^"]*"|[^\s]+', body)
        resolved = []
        for item in items:
            item = item.strip('"')
            for var, val in values.items():
                item = item.replace("${" + var + "}", " ".join(val))
            resolved.append(item)
        values[name] = resolved
    return values


def cmake_calls(path: Path, command: str) -> list[str]:
    return _calls(_strip_comments(path.read_text()), command)


@pytest.fixture(scope="module")
def module_sets():
    return cmake_sets(MODULE_CMAKE)


def test_cmake_lists_every_python_file_of_the_module_and_only_existing_ones(module_sets):
    listed = module_sets["MODULE_PYTHON_SCRIPTS"]
    on_disk = sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                     if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts))
    assert len(listed) == len(set(listed)), "duplicates in MODULE_PYTHON_SCRIPTS"
    missing = sorted(set(on_disk) - set(listed))
    stale = sorted(set(listed) - set(on_disk))
    assert not missing, f"add to MnetImSegment/CMakeLists.txt MODULE_PYTHON_SCRIPTS: {missing}"
    assert not stale, f"listed in MnetImSegment/CMakeLists.txt but not on disk: {stale}"


def test_cmake_lists_every_resource_and_they_exist(module_sets):
    listed = module_sets["MODULE_PYTHON_RESOURCES"]
    on_disk = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                     if p.is_file() and "model_weights" not in p.parts)
    assert sorted(listed) == on_disk
    for resource in listed:
        assert (MODULE_DIR / resource).is_file(), resource
    assert "Resources/UI/MnetImSegment.ui" in listed and "Resources/Icons/MnetImSegment.png" in listed


def test_cmake_ships_the_demo_weights_where_weights_py_finds_them(module_sets):
    from MnetImSegmentLib.engine import weights

    name = module_sets["MODULE_WEIGHTS_NAME"][0]
    assert name == weights.DEFAULT_WEIGHTS_NAME
    listed = module_sets["MODULE_WEIGHTS_FILES"]
    # Every file of the shipped folder (an ensemble's member files too: the extension must load what the CLI loads).
    shipped = sorted(p.name for p in (REPO / "model_weights" / name).iterdir() if p.is_file())
    assert weights.CARD in shipped and weights.TENSORS in shipped
    assert sorted(listed) == [f"model_weights/{name}/{f}" for f in shipped]
    for f in listed:  # relative to the repository root, where the command line finds them too
        assert (REPO / f).is_file(), f"{f} is listed for the extension but missing"
    # Built/installed, they go to <module dir>/Resources/model_weights/<name>: one of weights.py's places.
    installed = "/".join(module_sets["_weights_install_dir"][0].split("/")[1:])
    assert installed == f"Resources/model_weights/{name}"
    assert module_sets["_weights_install_dir"][0].startswith("${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}")
    assert module_sets["_weights_build_dir"][0].startswith("${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
    lib_dir = Path(weights.__file__).resolve().parents[1]  # MnetImSegmentLib (weights.py lives in engine/)
    module_dir_of_lib = lib_dir.parent
    assert module_dir_of_lib / "Resources" / "model_weights" in weights._SEARCH


def test_module_cmake_builds_the_scripted_module_and_registers_its_self_test():
    (build,) = cmake_calls(MODULE_CMAKE, "slicerMacroBuildScriptedModule")
    assert re.search(r"NAME\s+\$\{MODULE_NAME\}", build)
    assert re.search(r"SCRIPTS\s+\$\{MODULE_PYTHON_SCRIPTS\}", build)
    assert re.search(r"RESOURCES\s+\$\{MODULE_PYTHON_RESOURCES\}", build)
    assert "WITH_GENERIC_TESTS" in build
    assert any("SCRIPT ${MODULE_NAME}.py" in c for c in cmake_calls(MODULE_CMAKE, "slicer_add_python_unittest"))
    assert cmake_sets(MODULE_CMAKE)["MODULE_NAME"] == ["MnetImSegment"]
    assert (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()
    assert (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_top_level_cmake_declares_the_extension():
    top = REPO / "CMakeLists.txt"
    sets = cmake_sets(top)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert sets.get(key) and " ".join(sets[key]).strip(), f"{key} is empty"
    assert sets["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert "PyTorch" in sets["EXTENSION_DEPENDS"][0].split() and "SlicerRT" in sets["EXTENSION_DEPENDS"][0].split()
    assert sets["EXTENSION_MINIMUM_SLICER_VERSION"] == ["5.4"]
    assert "not for clinical use" in " ".join(sets["EXTENSION_DESCRIPTION"]).lower()
    assert sets["EXTENSION_ICONURL"][0].endswith("MnetImSegment/Resources/Icons/MnetImSegment.png")
    # No public home yet: the metadata points into this tree (README "Availability" says so), never
    # at an invented URL.
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        target = sets[key][0]
        assert "://" not in target, f"{key}: {target}"
        assert (REPO / target.split("#")[0]).is_file(), f"{key}: {target} is not a file of this tree"
    assert sets["EXTENSION_HOMEPAGE"] == ["README.md#availability"]
    contributors = " ".join(sets["EXTENSION_CONTRIBUTORS"])
    assert re.fullmatch(r"[^(),]+ \([^()]+\)(, [^(),]+ \([^()]+\))*", contributors), contributors
    text = _strip_comments(top.read_text())
    assert re.search(r"project\(\s*MnetImSegment\s*\)", text)
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "add_subdirectory(MnetImSegment)" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text


def test_no_placeholder_url_remains_anywhere():
    hits = []
    for path in REPO.rglob("*"):
        if ".git" in path.parts or ".venv" in path.parts or not path.is_file() or path.suffix not in (
                ".py", ".txt", ".md", ".json", ".ui", ".toml", ".cfg", ".cmake", ""):
            continue
        text = path.read_text(errors="ignore")
        if re.search(r"(github\.com|githubusercontent\.com)/MnetImSegment/MnetImSegment", text):
            hits.append(path.relative_to(REPO).as_posix())
    assert not hits, f"placeholder URLs in {hits}"


def test_license_file_is_the_apache_2_text_pyproject_declares():
    license_text = (REPO / "LICENSE").read_text()
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text) > 10000


def test_minimum_slicer_version_and_slicerrt_are_stated_and_checked():
    for doc in (REPO / "README.md", REPO / "docs" / "slicer.md"):
        text = doc.read_text()
        assert "Slicer 5.4 or newer" in text, doc.name
        assert "SlicerRT" in text, doc.name
    assert "## Availability" in (REPO / "README.md").read_text()
    source = MODULE_FILE.read_text()
    assert "slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)" in source
    # The check runs before the first import that needs 5.4.
    assert source.index("slicerVersionProblem(slicer.app") < source.index("from slicer.i18n import")
    assert "slicerRTProblem(slicerRTAvailable())" in source
    from MnetImSegmentLib.mrml.dependencies import slicerRTProblem, slicerVersionProblem

    assert slicerVersionProblem(5, 4) is None and slicerVersionProblem(6, 0) is None
    assert "5.4" in slicerVersionProblem(5, 2) and "5.2" in slicerVersionProblem(5, 2)
    assert slicerRTProblem(True) is None and "Extensions Manager" in slicerRTProblem(False)


def test_catalog_entry_draft_follows_the_extensions_index_format():
    import json

    entry = json.loads((REPO / "docs" / "extension_catalog_entry.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-")
    # The index schema allows only these keys (additionalProperties is false).
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}
    top = cmake_sets(REPO / "CMakeLists.txt")
    assert entry["category"] == top["EXTENSION_CATEGORY"][0]
    assert sorted(entry["build_dependencies"]) == sorted(top["EXTENSION_DEPENDS"][0].split())
    assert "scm_url" not in entry  # added when the repository is published (README "Availability")


def test_help_links_to_the_projects_own_documentation():
    source = MODULE_FILE.read_text()
    assert "getDefaultModuleDocumentationLink" not in source
    assert "helpText += documentationLink()" in source
    assert 'Path(__file__).resolve().parents[1] / "docs" / "slicer.md"' in source
    assert (REPO / "docs" / "slicer.md").is_file()


def test_icon_is_a_128_pixel_png():
    import matplotlib.image

    assert ICON_FILE.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(ICON_FILE)
    assert image.shape[:2] == (128, 128)
    assert np.ptp(image[..., :3]) > 0.3  # not a blank square


# --------------------------------------------------------------------------- the module file
@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_FILE.read_text(), filename=str(MODULE_FILE))


def _classes(tree) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _base_names(cls: ast.ClassDef) -> set[str]:
    return {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in cls.bases}


def _parameter_class(tree) -> ast.ClassDef:
    wrapped = [c for c in _classes(tree).values()
               if any((isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                      or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "parameterNodeWrapper")
                      for d in c.decorator_list)]
    assert len(wrapped) == 1, "exactly one @parameterNodeWrapper class expected"
    return wrapped[0]


def _parameter_fields(cls: ast.ClassDef) -> dict[str, str]:
    return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in cls.body if isinstance(stmt, ast.AnnAssign)}


def test_module_has_the_classes_slicer_expects(module_ast):
    classes = _classes(module_ast)
    assert "ScriptedLoadableModule" in _base_names(classes["MnetImSegment"])
    assert "ScriptedLoadableModuleWidget" in _base_names(classes["MnetImSegmentWidget"])
    assert "ScriptedLoadableModuleTest" in _base_names(classes["MnetImSegmentTest"])
    assert "ScriptedLoadableModuleLogic" in _base_names(classes["MnetImSegmentLogic"])
    fields = _parameter_fields(_parameter_class(module_ast))
    for name in ("inputVolume", "outputSegmentation", "weightsFolder", "device", "threshold",
                 "largestComponent", "keepProbability"):
        assert name in fields, name
    widget_methods = {f.name for f in classes["MnetImSegmentWidget"].body if isinstance(f, ast.FunctionDef)}
    assert {"setup", "cleanup", "onApplyButton"} <= widget_methods
    test_methods = {f.name for f in classes["MnetImSegmentTest"].body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= test_methods and any(m.startswith("test_") for m in test_methods)


def test_module_description_cites_the_paper_and_warns_about_the_demo_weights():
    source = MODULE_FILE.read_text()
    assert "10.1177/15330338221139164" in source
    assert "Technol Cancer Res Treat" in source and "Huang M, Feng C, Sun D, Cui M, Zhao D" in source
    assert "NOT for clinical" in source
    assert re.search(r'categories\s*=\s*\[translate\("qSlicerAbstractCoreModule",\s*"Segmentation"\)\]', source)
    for attribute in ("title", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{attribute}" in source


def test_module_installs_nothing_and_imports_no_torch_at_import_time(module_ast):
    for stmt in module_ast.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in stmt.names] + ([stmt.module] if isinstance(stmt, ast.ImportFrom) else [])
            assert not any(n and n.split(".")[0] in ("torch", "safetensors") for n in names), ast.unparse(stmt)
        if isinstance(stmt, ast.Expr):
            assert "pip_install" not in ast.unparse(stmt)
    source = MODULE_FILE.read_text()
    # One confirmation listing everything (the plan's text), torch through SlicerPyTorch with the pinned
    # minimum, pip arguments that pin Slicer's own packages, and a version check afterwards.
    assert source.count("confirmOkCancelDisplay") == 1 and "confirmOkCancelDisplay(plan.confirmationText()" in source
    assert "installTorch(askConfirmation=False,\n" in source and "torchVersionRequirement=torchVersionRequirement()" in source
    assert "slicer.util.pip_install(arguments[1:])" in source and "plan.pipArguments(str(constraints))" in source
    assert "after = planInstallation(currentVersions()" in source


def test_widget_runs_the_network_in_a_worker_process_unless_told_otherwise(module_ast):
    source = MODULE_FILE.read_text()
    assert "jobClass = ProcessJob" in source and "if self.settings.inProcess:" in source
    process_job = ast.unparse(_classes(module_ast)["ProcessJob"])
    assert "self.logic.startProcess(" in process_job and "self.logic.finishProcess(" in process_job
    assert "self.settings = ModuleSettings(qt.QSettings())" in source
    assert "weightsForScene(p.weightsFolder, self.settings)" in source


def test_self_test_runs_the_phantom_on_the_cpu_with_a_dice_check(module_ast):
    test_class = _classes(module_ast)["MnetImSegmentTest"]
    source = ast.unparse(test_class)
    assert "make_phantom" in source and 'device="cpu"' in source.replace("'", '"')
    assert "assertGreaterEqual(dice, 0.8)" in source
    assert "rethreshold" in source and "Cancelled" in source
    matrix = re.search(r"matrix=(\d+)", source)
    assert matrix and int(matrix.group(1)) <= 192, "the self-test must stay small (seconds, not minutes)"


def test_logic_imports_only_vtk_mrml_slicer_util_and_the_engine():
    lib = MODULE_DIR / "MnetImSegmentLib"
    bridge = [lib / "logic.py"] + sorted((lib / "mrml").glob("*.py"))
    assert len(bridge) >= 5, bridge
    allowed_top = {"__future__", "importlib", "logging", "threading", "time", "collections", "dataclasses",
                   "pathlib", "typing", "numpy", "vtk", "slicer",
                   # the standard library the worker process client needs (no Qt: it is polled by the widget)
                   "json", "os", "queue", "re", "shutil", "signal", "subprocess", "sys", "tempfile"}
    for path in bridge:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed_top | {"torch"}, (path.name, alias.name)
                    assert alias.name in ("slicer", "slicer.util") or not alias.name.startswith("slicer"), alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed_top, (path.name, node.module)
                assert node.module in ("vtk.util",) or not node.module.startswith(("slicer.", "qt", "ctk")), node.module
        text = path.read_text()
        for forbidden in ("import qt", "import ctk", "ScriptedLoadableModule", "slicer.app", "slicer.modules"):
            assert forbidden not in text, (path.name, forbidden)


# --------------------------------------------------------------------------- the .ui file
@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE)  # raises if the XML is not well formed


def _ui_widgets(tree) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in tree.iter("widget")}


def test_ui_is_a_qmrmlwidget_with_every_widget_the_module_uses(ui_tree, module_ast):
    root = ui_tree.getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    names = set(_ui_widgets(ui_tree)) | {layout.get("name") for layout in ui_tree.iter("layout")}
    used = {node.attr for node in ast.walk(module_ast)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the module uses no self.ui widgets?"
    assert used <= names, f"missing in the .ui: {sorted(used - names)}"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used_classes = {w.get("class") for w in ui_tree.iter("widget")}
    assert {c for c in used_classes if c.startswith(("ctk", "qMRML"))} <= custom


# Which widget class the parameter-node wrapper can connect to which annotation (Slicer's guiConnectors).
CONNECTABLE = {
    "vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox",
    "vtkMRMLSegmentationNode": "qMRMLNodeComboBox",
    "vtkMRMLMarkupsFiducialNode": "qMRMLNodeComboBox",
    "Path": "ctkPathLineEdit",
    "Device": "QComboBox",
    "bool": "QCheckBox",
    "float": "ctkSliderWidget",
}


def test_ui_parameter_names_match_the_parameter_node(ui_tree, module_ast):
    fields = _parameter_fields(_parameter_class(module_ast))
    connected = {}
    for widget in ui_tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                connected[prop.findtext("string")] = widget
    assert set(connected) <= set(fields), f"unknown parameters in the .ui: {set(connected) - set(fields)}"
    for name in ("inputVolume", "outputSegmentation", "weightsFolder", "device", "threshold", "largestComponent",
                 "keepProbability"):
        assert name in connected, f"{name} has no widget"
    for name, widget in connected.items():
        annotation = fields[name]
        base = re.sub(r"Annotated\[(\w+),.*\]", r"\1", annotation)
        assert CONNECTABLE.get(base) == widget.get("class"), f"{name}: {annotation} cannot bind to {widget.get('class')}"
    slider = _ui_widgets(ui_tree)["thresholdSliderWidget"]
    props = {p.get("name"): p for p in slider.findall("property")}
    assert float(props["minimum"].findtext("double")) == pytest.approx(0.01)
    assert float(props["maximum"].findtext("double")) == pytest.approx(0.99)
    assert "WithinRange(MIN_THRESHOLD, MAX_THRESHOLD)" in fields["threshold"]
    output = _ui_widgets(ui_tree)["outputSegmentationSelector"]
    oprops = {p.get("name"): p for p in output.findall("property")}
    assert oprops["noneEnabled"].findtext("bool") == "true"  # "create new" is the default choice
    assert "new" in oprops["noneDisplay"].findtext("string").lower()
    edit = _ui_widgets(ui_tree)["weightsPathLineEdit"]
    assert "ctkPathLineEdit::Dirs" in {p.get("name"): p for p in edit.findall("property")}["filters"].findtext("set")
