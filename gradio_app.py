"""The Dia2 studio: `python gradio_app.py --tiny` (options: `python gradio_app.py --help`)."""

import sys

from dia2.studio.app import main

if __name__ == "__main__":
    sys.exit(main())
