from registrator.cli import main

raise SystemExit(main())
