"""Code for a writer process of a voices folder (`python -c LOAD_VOICE_FOLDER + ...`), killed mid-write
by the tests: it loads dia2/serving/voice_folder.py alone, which needs only the standard library
and `dia2.processes` (the light `dia2` package, never torch), so it starts in a blink."""

from tests.conftest import REPO_ROOT

LOAD_VOICE_FOLDER = (
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('voice_folder', {str(REPO_ROOT / 'dia2/serving/voice_folder.py')!r})\n"
    "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); VoiceFolder = module.VoiceFolder\n"
)
