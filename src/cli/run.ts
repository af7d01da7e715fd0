/** Process entry of the `shepherd-mesh` command (bin/shepherd-mesh.js loads the compiled copy). */
import { main } from './main.js'

process.exitCode = await main(process.argv.slice(2))
