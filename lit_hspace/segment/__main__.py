"""python -m lit_hspace.segment"""

from lit_hspace.segment.cli import main

main()
